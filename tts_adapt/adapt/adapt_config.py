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
    # --- options of single strategies (each block belongs to one strategy; others ignore it) ---
    # lalora (strategies/lalora.py)
    lalora_a_prior: float = field(default=0.0, metadata={
        "strategy": "lalora",
        "help": "lalora: prior precision on A - A*, relative to the mean Fisher precision of the layer's B entries; "
                "for a curvature fitted at peft's initialisation (B* = 0), whose Fisher leaves A unconstrained. "
                "0: none (the default curvature is fitted after a warm start; docs/strategy-lalora.md).",
        "range": ">= 0"})
    # ilora (strategies/ilora.py)
    ilora_beta: float = field(default=0.99, metadata={
        "strategy": "ilora",
        "help": "ilora: EMA factor β of the slow adapter, θ_slow ← β·θ_slow + (1 − β)·θ_fast after every step.",
        "range": ">= 0, < 1"})
    replay_size: int = field(default=64, metadata={
        "strategy": "ilora",
        "help": "ilora: pretraining utterances held in the reservoir replay buffer.", "range": ">= 1"})
    replay_batch: int = field(default=2, metadata={
        "strategy": "ilora",
        "help": "ilora: replayed utterances mixed into each batch (and new ones offered to the buffer after each "
                "step); 2 per 8 target clips keeps a step within 1.6 times plain LoRA's (docs/strategy-ilora.md).",
        "range": ">= 1"})
    replay_pool: int = field(default=400, metadata={
        "strategy": "ilora",
        "help": "ilora: pretraining utterances of --replay-data the buffer streams over (a seeded sample taken as "
                "fit-curvature takes it, so the same number shares its feature cache).", "range": ">= 1"})
    consistency: float = field(default=1.0, metadata={
        "strategy": "ilora",
        "help": "ilora: weight of the consistency loss between the fast and slow adapters' hidden states on the "
                "replayed utterances (0: off).", "range": ">= 0"})
    consistency_target: str = field(default="slow", metadata={
        "strategy": "ilora",
        "help": "ilora: what the fast hidden states are pulled towards: slow (the slow adapter's) or max (the "
                "element-wise maximum of both, as the authors' code)."})
    # selective (strategies/selective.py)
    gate_threshold: float = field(default=0.1, metadata={
        "strategy": "selective",
        "help": "selective: a LoRA block is active while its learned score is >= this threshold (TAPS's 0.1).",
        "range": "> 0"})
    gate_margin: float = field(default=0.02, metadata={
        "strategy": "selective",
        "help": "selective: scores start this far above gate_threshold, so every block starts active; with AdamW a "
                "score moves by about lr per step, so gate_margin / lr is about the fewest steps in which the L1 "
                "penalty can close a block after the warm-up (10 at the defaults).", "range": "> 0"})
    gate_l1: float = field(default=5e-4, metadata={
        "strategy": "selective",
        "help": "selective: strength of the L1 penalty on the scores, gate_l1 * sum |score|: a block stays active "
                "while switching it off would raise the loss by more than gate_l1 per unit of gate (first order). "
                "Default: between the median and the 90th percentile of the scores' loss gradients on the shipped "
                "model (docs/strategy-selective.md). 0: no sparsity pressure.", "range": ">= 0"})
    gate_warmup: int = field(default=20, metadata={
        "strategy": "selective",
        "help": "selective: steps before the L1 penalty starts: a score's loss gradient is zero while its block's "
                "LoRA-B is zero (the first step) and small while B is small, so the L1 alone would close blocks "
                "before they learned anything. With gate_margin, it lets gates close before plain LoRA's best "
                "validation on the shipped model (docs/strategy-selective.md).", "range": ">= 0"})

    def __post_init__(self):
        # imported here, not at the top, so that the CLI reads this module without importing PyTorch
        from tts_adapt.adapt.strategies import get_strategy

        strategy = get_strategy(self.strategy)  # an unknown name is an error listing the registered ones
        check_fields(self)
        if self.lam is None:  # the run records the λ it used, never "unset"
            object.__setattr__(self, "lam", float(strategy.default_lam))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_settings(self) -> dict:
        """The settings that shape this run: every field except the options of other strategies (a field whose
        metadata names a strategy belongs to that one alone)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("strategy") in (None, self.strategy)}

    def same_run(self, recorded: dict | None) -> bool:
        """Do ``recorded`` settings (a run record's or checkpoint's ``config``) make the same run as these? Only
        :meth:`run_settings` count, so a changed default of another strategy's option leaves the run valid; a
        setting the record lacks (written before it existed) counts as its default."""
        if not isinstance(recorded, dict):
            return False
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return all(recorded.get(k, defaults[k]) == v for k, v in self.run_settings().items())
