"""Settings of an adaptation run (free of heavy imports so the CLI starts fast). The target's settings are
:class:`tts_adapt.data.target_split.TargetConfig`, the curvature's :class:`tts_adapt.curvature.curvature_config.CurvatureConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tts_adapt.settings import check_fields

MIN_CLIPS, MAX_CLIPS = 10, 50  # target clips an adaptation accepts by default (fewest) and uses (most)


@dataclass(frozen=True)
class AdaptConfig:
    strategy: str = field(default="kfac", metadata={"help": "A registered strategy: lora, l2, diag, kfac, ekfac "
                                                            "(tts_adapt.adapt.strategies.STRATEGIES)."})
    lam: float | None = field(default=None, metadata={
        "help": "Penalty strength λ (in pretraining utterances for the Fisher penalties). Unset: the strategy's "
                "documented default (docs/method.md); 0 turns a penalty off, with a warning.",
        "type": float, "range": ">= 0"})
    damping: float = field(default=0.0, metadata={"help": "Extra δ·‖ΔW‖² added to curvature penalties.",
                                                  "range": ">= 0"})
    rank: int = field(default=8, metadata={"help": "LoRA rank r.", "range": ">= 1"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; scale s = alpha / r.", "range": "> 0"})
    steps: int = field(default=300, metadata={"help": "Maximum optimizer steps.", "range": ">= 1"})
    batch_size: int = field(default=8, metadata={"help": "Clips per step.", "range": ">= 1"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the LoRA weights.",
                                              "range": "> 0, <= 1"})
    val_every: int = field(default=25, metadata={"help": "Steps between validations on held-out clips.",
                                                 "range": ">= 1"})
    patience: int = field(default=4, metadata={"help": "Validations without improvement before stopping.",
                                               "range": ">= 1"})
    checkpoint_every: int = field(default=25, metadata={"help": "Steps between resumable checkpoints.",
                                                        "range": ">= 1"})
    seed: int = field(default=0, metadata={"help": "Seed of LoRA initialisation, data order and split."})

    def __post_init__(self):
        # imported here, not at the top, so that the CLI reads this module without importing PyTorch
        from tts_adapt.adapt.strategies import get_strategy

        strategy = get_strategy(self.strategy)  # an unknown name is an error listing the registered ones
        check_fields(self)
        if self.lam is None:  # the run records the λ it used, never "unset"
            object.__setattr__(self, "lam", float(strategy.default_lam))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
