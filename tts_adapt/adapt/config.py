"""Settings of an adaptation run (free of heavy imports so the CLI starts fast). The target's settings are
:class:`tts_adapt.data.target.TargetConfig`, the curvature's :class:`tts_adapt.curvature.fit_config.CurvatureConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MIN_CLIPS, MAX_CLIPS = 10, 50  # target clips an adaptation accepts by default (fewest) and uses (most)


@dataclass(frozen=True)
class AdaptConfig:
    strategy: str = field(default="kfac", metadata={"help": "A registered strategy: lora, l2, diag, kfac, ekfac "
                                                            "(tts_adapt.adapt.strategies.STRATEGIES)."})
    lam: float = field(default=0.0, metadata={"help": "Penalty strength λ (in pretraining utterances)."})
    damping: float = field(default=0.0, metadata={"help": "Extra δ·‖ΔW‖² added to curvature penalties."})
    rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; scale s = alpha / r."})
    steps: int = field(default=300, metadata={"help": "Maximum optimizer steps."})
    batch_size: int = field(default=8, metadata={"help": "Clips per step."})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the LoRA weights."})
    val_every: int = field(default=25, metadata={"help": "Steps between validations on held-out clips."})
    patience: int = field(default=4, metadata={"help": "Validations without improvement before stopping."})
    checkpoint_every: int = field(default=25, metadata={"help": "Steps between resumable checkpoints."})
    seed: int = field(default=0, metadata={"help": "Seed of LoRA initialisation, data order and split."})

    def __post_init__(self):
        # imported here, not at the top, so that the CLI reads this module without importing PyTorch
        from tts_adapt.adapt.strategies import get_strategy

        get_strategy(self.strategy)  # an unknown name is an error listing the registered ones
        if self.lam < 0:
            raise ValueError(f"lam must be non-negative, got {self.lam}")
        for name in ("rank", "steps", "batch_size", "val_every", "checkpoint_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
