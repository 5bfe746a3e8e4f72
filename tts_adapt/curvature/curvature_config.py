"""Settings of a curvature fit (``tts-adapt fit-curvature``), free of heavy imports so the CLI starts fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from tts_adapt.settings import check_fields


class CurvatureMethod(str, Enum):
    KFAC = "kfac"
    EKFAC = "ekfac"
    DIAG = "diag"


class FisherType(str, Enum):
    EMPIRICAL = "empirical"
    MC = "mc"


CURVATURE_METHODS = tuple(m.value for m in CurvatureMethod)
FISHER_TYPES = tuple(f.value for f in FisherType)


@dataclass(frozen=True)
class CurvatureConfig:
    """The curvature fit of the Laplace prior (``tts-adapt fit-curvature``)."""

    method: str = field(default="kfac", metadata={"help": "kfac, ekfac or diag."})
    fisher: str = field(default="empirical", metadata={"help": "Gradients from real targets (empirical) or from "
                                                                 "targets sampled from the model (mc)."})
    num_utterances: int = field(default=1000, metadata={"range": ">= 1", "help": "Pretraining utterances to fit on."})
    batch_size: int = field(default=8, metadata={"range": ">= 1", "help": "Utterances per batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the utterance sample and of MC targets."})

    def __post_init__(self):
        check_fields(self)
        if self.method not in CURVATURE_METHODS:
            raise ValueError(f"unknown curvature method {self.method!r}; valid: {', '.join(CURVATURE_METHODS)}")
        if self.fisher not in FISHER_TYPES:
            raise ValueError(f"unknown Fisher type {self.fisher!r}; valid: {', '.join(FISHER_TYPES)}")
        for name in ("num_utterances", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
