"""Settings of a pretraining run (kept free of heavy imports so the CLI starts fast)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tts_adapt.settings import check_fields

#: Settings added after runs were made without them, with the value those runs used.
EARLIER_DEFAULTS = {"n_mels": 80, "f0_method": "swipe", "init_from": ""}


@dataclass(frozen=True)
class PretrainConfig:
    backend: str = field(default="fastpitch", metadata={"help": "Model backend (fastpitch, glowtts)."})
    size: str = field(default="small", metadata={"help": "Model size preset of the backend."})
    conditioning: str = field(default="d_vector", metadata={"help": "Speaker conditioning: d_vector or id_table."})
    n_mels: int = field(default=128, metadata={"range": ">= 1", 
        "help": "Mel bands of the model's features (16 kHz, 0-8 kHz). 80 bands are too coarse for the harmonics "
                "of voices below about 110 Hz, which Griffin-Lim then renders unvoiced."})
    f0_method: str = field(default="rapt", metadata={
        "help": "F0 tracker of the pitch targets: rapt, or swipe (jumps octaves on voices below about 70 Hz)."})
    init_from: str = field(default="", metadata={
        "help": "Model folder whose weights start the run (same backend, size and mel bands); the run's own "
                "schedule, data and statistics apply. Empty: random initialisation."})
    steps: int = field(default=20000, metadata={"range": ">= 1", "help": "Total optimizer steps."})
    batch_size: int = field(default=16, metadata={"range": ">= 1", "help": "Utterances per step (all processes together)."})
    lr: float = field(default=1e-3, metadata={"range": "> 0, <= 1", "help": "Peak learning rate (AdamW)."})
    warmup_steps: int = field(default=1000, metadata={"range": ">= 1", "help": "Linear warm-up, then inverse square-root decay."})
    cooldown_steps: int = field(default=0, metadata={"range": ">= 0", 
        "help": "The last N of `steps` decay the learning rate linearly to zero (0: no cool-down)."})
    weight_decay: float = field(default=1e-6, metadata={"range": ">= 0", "help": "AdamW weight decay."})
    grad_clip: float = field(default=5.0, metadata={"range": "> 0", "help": "Gradient-norm clipping threshold."})
    max_seconds: float = field(default=8.0, metadata={"range": "> 0", "help": "Leave out longer utterances."})
    checkpoint_every: int = field(default=250, metadata={"range": ">= 1", "help": "Steps between checkpoints (and validation)."})
    log_every: int = field(default=25, metadata={"range": ">= 1", "help": "Steps between log rows."})
    val_utterances: int = field(default=64, metadata={"range": ">= 0", "help": "Held-out utterances for validation loss."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and data order."})

    def __post_init__(self):
        check_fields(self)
        for name in ("n_mels", "steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.cooldown_steps < self.steps:
            raise ValueError(f"cooldown_steps must be in [0, steps); got {self.cooldown_steps} of {self.steps}")
        from tts_adapt.data.audio import F0_METHODS

        if self.f0_method not in F0_METHODS:
            raise ValueError(f"f0_method must be one of {', '.join(F0_METHODS)}, got {self.f0_method!r}")
        if self.conditioning not in ("d_vector", "id_table"):
            raise ValueError(f"conditioning must be d_vector or id_table, got {self.conditioning!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
