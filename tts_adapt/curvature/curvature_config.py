"""Settings of a curvature fit (``tts-adapt fit-curvature``), free of heavy imports so the CLI starts fast."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

from tts_adapt.settings import check_fields


class CurvatureMethod(str, Enum):
    KFAC = "kfac"
    EKFAC = "ekfac"
    DIAG = "diag"
    # LaLoRA: curvature w.r.t. the LoRA factors A and B themselves (tts_adapt.curvature.lora_params)
    LALORA_KFAC = "lalora-kfac"
    LALORA_DIAG = "lalora-diag"


class FisherType(str, Enum):
    EMPIRICAL = "empirical"
    MC = "mc"


CURVATURE_METHODS = tuple(m.value for m in CurvatureMethod)
LORA_METHODS = (CurvatureMethod.LALORA_KFAC.value, CurvatureMethod.LALORA_DIAG.value)
FISHER_TYPES = tuple(f.value for f in FisherType)


@dataclass(frozen=True)
class CurvatureConfig:
    """The curvature fit of the Laplace prior (``tts-adapt fit-curvature``)."""

    method: str = field(default="kfac", metadata={"help": "kfac, ekfac or diag (on ΔW); lalora-kfac or "
                                                          "lalora-diag (on the LoRA factors A and B)."})
    fisher: str = field(default="empirical", metadata={"help": "Gradients from real targets (empirical) or from "
                                                                 "targets sampled from the model (mc)."})
    num_utterances: int = field(default=1000, metadata={"range": ">= 1", "help": "Pretraining utterances to fit on."})
    batch_size: int = field(default=8, metadata={"range": ">= 1", "help": "Utterances per batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the utterance sample and of MC targets."})
    # the LoRA setup a lalora-* curvature is fitted for (it must be the adaptation's: tts-adapt adapt refuses
    # another); the other methods ignore these
    rank: int = field(default=8, metadata={"range": ">= 1", "help": "lalora-*: LoRA rank r of the adaptation."})
    alpha: float = field(default=16.0, metadata={"range": "> 0", "help": "lalora-*: LoRA alpha of the adaptation."})
    lora_seed: int = field(default=0, metadata={"help": "lalora-*: seed of the LoRA initialisation (the "
                                                        "adaptation's --seed)."})
    # 50: measured against a prior precision on A on the embedded default (docs/strategy-lalora.md, "Measured")
    warm_start_steps: int = field(default=50, metadata={
        "range": ">= 0", "help": "lalora-*: LoRA steps on the fit utterances before the fit, so that B != 0 and A "
                                 "gets curvature (the adaptation then starts there); 0: fit at peft's "
                                 "initialisation (B = 0), where A's curvature is zero."})
    warm_start_lr: float = field(default=2e-3, metadata={"range": "> 0, <= 1",
                                                         "help": "lalora-*: AdamW learning rate of the warm start."})

    def __post_init__(self):
        check_fields(self)
        if self.method not in CURVATURE_METHODS:
            raise ValueError(f"unknown curvature method {self.method!r}; valid: {', '.join(CURVATURE_METHODS)}")
        if self.fisher not in FISHER_TYPES:
            raise ValueError(f"unknown Fisher type {self.fisher!r}; valid: {', '.join(FISHER_TYPES)}")
        for name in ("num_utterances", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.method not in LORA_METHODS:
            lora_only = [f.name for f in fields(self)
                         if f.name in LORA_SETUP_FIELDS and getattr(self, f.name) != f.default]
            if lora_only:
                raise ValueError(f"{', '.join(lora_only)} only apply to the lalora-* methods, not {self.method!r}")

    def lora_setup(self) -> dict | None:
        """The LoRA setup of a lalora-* fit (None for the other methods)."""
        if self.method not in LORA_METHODS:
            return None
        return {name: getattr(self, name) for name in LORA_SETUP_FIELDS}


#: The fields of :class:`CurvatureConfig` that describe the LoRA setup of a lalora-* fit.
LORA_SETUP_FIELDS = ("rank", "alpha", "lora_seed", "warm_start_steps", "warm_start_lr")
