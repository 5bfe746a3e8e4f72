"""Settings of the strategy × λ sweep (:mod:`tts_adapt.evaluate.sweep`), apart from the sweep itself so that
the command line reads them without importing PyTorch and the models."""

from __future__ import annotations

from dataclasses import dataclass, field

from tts_adapt.settings import check_fields


DEFAULT_LAM = "default"  # in SweepConfig.lams: each penalised strategy's own default λ


def _lam(value) -> float | str:
    return DEFAULT_LAM if isinstance(value, str) and value.strip().lower() == DEFAULT_LAM else float(value)


def _as_tuple(value, cast, name: str) -> tuple:
    items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, (int, float)) else value)
    try:
        return tuple(cast(v.strip() if isinstance(v, str) else v) for v in items
                     if not (isinstance(v, str) and not v.strip()))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: could not read {value!r} as a list ({err})") from err


@dataclass(frozen=True)
class SweepConfig:
    strategies: tuple[str, ...] = field(default=("lora", "l2", "diag", "kfac", "ekfac"),
                                        metadata={"help": "Strategies, comma-separated."})
    lams: tuple[float | str, ...] = field(default=(3000.0, 10000.0, 30000.0), metadata={
        "help": "Penalty strengths λ, comma-separated (not used by lora); 'default' stands for each strategy's own "
                "default λ (the one adapt uses without --lam). The default grid ends at the Laplace penalties' "
                "default λ, 30000."})
    clips: int = field(default=20, metadata={"help": "Target clips to adapt on (embedded default).", "range": ">= 1"})
    heldout: int = field(default=8, metadata={"help": "Held-out target clips to measure learning on.",
                                              "range": ">= 1"})
    steps: int = field(default=200, metadata={"help": "Adaptation steps per cell.", "range": ">= 1"})
    rank: int = field(default=8, metadata={"help": "LoRA rank.", "range": ">= 1"})
    lr: float = field(default=2e-3, metadata={"help": "Adaptation learning rate.", "range": "> 0, <= 1"})
    curvature_utterances: int = field(default=400, metadata={"help": "Pretraining utterances for the curvature.",
                                                             "range": ">= 1"})
    old_speakers: int = field(default=8, metadata={"help": "Old (pretraining) speakers to measure forgetting on.",
                                                   "range": ">= 0"})
    unseen_speakers: int = field(default=6, metadata={"help": "Unseen voices (zero-shot) to measure forgetting on.",
                                                      "range": ">= 0"})
    per_speaker: int = field(default=4, metadata={"help": "Held-out utterances per old / unseen speaker (4 keeps "
                                                          "the forgetting figures' intervals narrower than the "
                                                          "difference between the strategies: docs/measures.md).",
                                                  "range": ">= 1"})
    seed: int = field(default=0, metadata={"help": "Seed of the target's clips, the curvature sample and, without "
                                                   "seeds, of adaptation."})
    seeds: tuple[int, ...] = field(default=(), metadata={
        "help": "Adaptation seeds, comma-separated (default: the seed): every cell is adapted and evaluated once per "
                "seed and reported as mean ± standard error over seeds."})

    def __post_init__(self):
        # imported here, not at the top, so that the CLI reads this module without importing PyTorch
        from tts_adapt.adapt.strategies import get_strategy

        check_fields(self)
        # lists may come as "a,b" (command line) or YAML lists
        object.__setattr__(self, "strategies", _as_tuple(self.strategies, str, "strategies"))
        object.__setattr__(self, "lams", _as_tuple(self.lams, _lam, "lams"))
        object.__setattr__(self, "seeds", _as_tuple(self.seeds, int, "seeds"))
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: each seed once, got {self.seeds}")

        for s in self.strategies:
            get_strategy(s)  # an unknown name is an error listing the registered ones
        if len(set(self.lams)) != len(self.lams):
            raise ValueError(f"lams: each λ once, got {self.lams}")
        if any(lam != DEFAULT_LAM and lam <= 0 for lam in self.lams):
            raise ValueError(f"lams must be positive, got {self.lams}")
        if not self.lams and any(get_strategy(s).uses_lam for s in self.strategies):
            raise ValueError("lams: give at least one penalty strength for the penalised strategies")

    def adaptation_seeds(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)

    def cells(self) -> list[tuple[str, float]]:
        from tts_adapt.adapt.strategies import get_strategy  # (as in __post_init__)

        def grid(strategy: str) -> list[float]:  # 'default' becomes the strategy's own λ
            default = get_strategy(strategy).default_lam
            return sorted({default if lam == DEFAULT_LAM else float(lam) for lam in self.lams})

        return [(s, 0.0) for s in self.strategies if not get_strategy(s).uses_lam] + \
               [(s, lam) for s in self.strategies if get_strategy(s).uses_lam for lam in grid(s)]

