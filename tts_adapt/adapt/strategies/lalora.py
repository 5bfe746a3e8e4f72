"""LaLoRA: a Laplace approximation over the LoRA factors A and B themselves (docs/strategy-lalora.md).

The curvature is the Fisher of the pretraining loss w.r.t. the factors at a point θ* = (A*, B*)
(``tts-adapt fit-curvature --method lalora-kfac | lalora-diag``, :mod:`tts_adapt.curvature.lora_params`);
the adaptation starts at θ* and its loss is ``L_tts + (λ / 2) · P`` with, per adapted layer and dA = A − A*,
dB = B − B*,

* ``lalora-kfac`` (block K-FAC, one Kronecker block per factor): P = tr(dAᵀ G_A dA A_A) + tr(dBᵀ G_B dB A_B);
* ``lalora-diag``: P = Σ F_A ⊙ dA² + Σ F_B ⊙ dB²;

plus ``lalora_a_prior`` · p_l · ‖dA‖², a prior precision on A relative to p_l, the mean Fisher precision of
the layer's B entries (the diagonal of its B block, averaged), and ``damping`` · (‖dA‖² + ‖dB‖²).

With peft's initialisation (B* = 0) the Fisher w.r.t. A is exactly zero (∇A = s Bᵀ g xᵀ): the file constrains
only B, and A could move freely, taking ΔW = s (B* + dB)(A* + dA) into directions the B block never saw. Two
remedies are offered and measured (docs/strategy-lalora.md): a warm start, LoRA trained for a few steps on the
fit's pretraining utterances so that B* ≠ 0 and A has a Fisher of its own (fit option ``--warm-start-steps``,
:class:`LoraPointBuilder`; the default, which forgot less), and the prior precision on A above.

The Fisher is an expectation per pretraining utterance, as for the penalties on ΔW, so λ counts pretraining
utterances here too; at B* = 0 the B block is exactly the K-FAC penalty on ΔW with A frozen at A*.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from tts_adapt.adapt.lora import LoraFactors, adapter_parameters, lora_factors, wrap_with_lora
from tts_adapt.adapt.strategies.base import register_strategy
from tts_adapt.adapt.strategies.penalties import PenaltyStrategy
from tts_adapt.curvature.curvature_config import LORA_METHODS, CurvatureConfig, CurvatureMethod
from tts_adapt.curvature.lora_params import LoraPoint, lora_setup_of
from tts_adapt.models.trainer import LoopConfig, Trainer

log = logging.getLogger(__name__)

INIT_PEFT, INIT_WARM = "peft", "warm-start"


class LoraSetupMismatchError(ValueError):
    """A LaLoRA curvature fitted for another LoRA setup (rank, alpha, seed or target layers) than the run's."""


# --------------------------------------------------------------------------- the point of the fit
@dataclass(frozen=True)
class LoraPointBuilder:
    """The LoRA point of a LaLoRA fit (a :class:`~tts_adapt.curvature.lora_params.LoraPointMaker`): peft's
    initialisation of the adaptation's LoRA (:func:`~tts_adapt.adapt.lora.wrap_with_lora` with its rank,
    alpha and seed; B = 0), then, with ``warm_start_steps``, that many AdamW steps of LoRA on the fit's
    pretraining utterances (batches of ``batch_size`` in an order fixed by the seed), on a copy of the model."""

    # the defaults are fit-curvature's (one source of truth: CurvatureConfig)
    rank: int = CurvatureConfig.rank
    alpha: float = CurvatureConfig.alpha
    lora_seed: int = CurvatureConfig.lora_seed
    warm_start_steps: int = CurvatureConfig.warm_start_steps
    warm_start_lr: float = CurvatureConfig.warm_start_lr
    batch_size: int = CurvatureConfig.batch_size
    progress: bool = True

    @property
    def setup(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "seed": self.lora_seed,
                "init": INIT_WARM if self.warm_start_steps else INIT_PEFT,
                "warm_start_steps": self.warm_start_steps,
                "warm_start_lr": self.warm_start_lr if self.warm_start_steps else None}

    @classmethod
    def from_setup(cls, setup: dict, batch_size: int = 8, progress: bool = True) -> LoraPointBuilder:
        """From a :meth:`tts_adapt.curvature.curvature_config.CurvatureConfig.lora_setup` dict."""
        return cls(rank=setup["rank"], alpha=setup["alpha"], lora_seed=setup["lora_seed"],
                   warm_start_steps=setup["warm_start_steps"], warm_start_lr=setup["warm_start_lr"],
                   batch_size=batch_size, progress=progress)

    def __call__(self, backend, features, targets: list[str]) -> LoraPoint:
        model = copy.deepcopy(backend.model)  # the backend's own model stays the base model
        peft_model = wrap_with_lora(model, targets, self.rank, self.alpha, seed=self.lora_seed)
        if self.warm_start_steps:
            self._warm_start(backend, model, peft_model, features)
        factors = lora_factors(peft_model)
        scales = {f.scale for f in factors}
        if len(scales) != 1:
            raise ValueError(f"the LoRA layers have different scales {sorted(scales)}; LaLoRA needs one alpha / r")
        return LoraPoint({f.name: (f.A.detach().clone().cpu(), f.B.detach().clone().cpu()) for f in factors},
                         scales.pop())

    def _warm_start(self, backend, model, peft_model, features) -> None:
        warm = copy.copy(backend)
        warm.model = model
        params = adapter_parameters(peft_model)
        n, size = len(features), min(self.batch_size, len(features))

        def epoch_batches(epoch: int) -> list[list[int]]:
            order = np.random.default_rng([self.lora_seed, epoch]).permutation(n).tolist()
            return [order[i:i + size] for i in range(0, n - size + 1, size)]

        optimizer = torch.optim.AdamW(list(params.values()), lr=self.warm_start_lr, weight_decay=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.lora_seed)
            trainer = Trainer(peft_model, params, optimizer, warm.loss, epoch_batches,
                              lambda idx: warm.collate([features[i] for i in idx]),
                              LoopConfig(steps=self.warm_start_steps, checkpoint_every=self.warm_start_steps,
                                         raise_on_non_finite=True),
                              progress=self.progress, desc="LaLoRA warm start on pretraining data")
            trainer.fit()
        peft_model.eval()


# --------------------------------------------------------------------------- the strategy
@register_strategy
class LaLoRAPenalty(PenaltyStrategy):
    """LoRA under the Laplace approximation of the pretraining data over its own factors (see the module doc)."""

    name = "lalora"
    curvature_method = CurvatureMethod.LALORA_KFAC.value  # what sweep fits and error messages suggest
    curvature_methods: ClassVar[tuple[str, ...]] = LORA_METHODS  # either structure is read
    #: λ of a run that sets none, in pretraining utterances: of the λ measured on the embedded default with the
    #: default curvature (docs/strategy-lalora.md, "Measured"), the one with the least forgetting at the learning of
    #: plain LoRA
    default_lam = 100000.0

    def __init__(self, curvature=None, **kwargs):
        super().__init__(curvature, **kwargs)
        if self.curvature is None:
            return
        if self.curvature.method not in LORA_METHODS:
            raise ValueError(f"strategy lalora needs a lalora-kfac or lalora-diag curvature, not "
                             f"{self.curvature.method} (tts-adapt fit-curvature --method lalora-kfac)")
        setup, c = lora_setup_of(self.curvature), self.config
        asked = {"rank": c.rank, "alpha": float(c.alpha), "seed": c.seed}
        fitted = {"rank": setup.get("rank"), "alpha": float(setup.get("alpha", "nan")), "seed": setup.get("seed")}
        changed = [f"{k} {fitted[k]} in the curvature, {asked[k]} here" for k in asked if fitted[k] != asked[k]]
        if changed:
            raise LoraSetupMismatchError(
                f"the lalora curvature was fitted for another LoRA setup ({'; '.join(changed)}): its Fisher w.r.t. "
                "A and B holds at that setup's initialisation only; adapt with the same --rank, --alpha and --seed, "
                "or fit it again (tts-adapt fit-curvature --method "
                f"{self.curvature.method} --rank {c.rank} --alpha {c.alpha:g} --lora-seed {c.seed})")
        self.layer_precision: dict[str, float] = {}

    def wrap(self, model, targets, trainable_rows=None):
        if self.curvature is not None:
            fitted = list(lora_setup_of(self.curvature).get("targets", self.curvature.targets))
            if list(targets) != fitted:
                extra, missing = sorted(set(targets) - set(fitted)), sorted(set(fitted) - set(targets))
                raise LoraSetupMismatchError(
                    "the lalora curvature was fitted for other LoRA target layers"
                    + (f"; not in the curvature: {', '.join(extra[:5])}" if extra else "")
                    + (f"; not adapted here: {', '.join(missing[:5])}" if missing else "")
                    + ("; in another order" if not extra and not missing else "")
                    + "; adapt its --targets (the default) or fit it again for these")
        wrapped = super().wrap(model, targets, trainable_rows)
        if self.curvature is not None:
            self._start_at_mean(lora_factors(wrapped))
        return wrapped

    def check_layers(self, factors: list[LoraFactors]) -> None:
        if self.curvature is None:
            return
        names = set(self.curvature.layer_names)
        missing = [f.name for f in factors if f"{f.name}.lora_A" not in names or f"{f.name}.lora_B" not in names]
        if missing:
            raise LoraSetupMismatchError(f"the lalora curvature has no statistics for {len(missing)} adapted "
                                         f"layer(s): {', '.join(missing[:5])}; fit it for the same --targets")

    def _start_at_mean(self, factors: list[LoraFactors]) -> None:
        """Put the LoRA factors at the Laplace mean θ* (peft's initialisation, or the warm start's point)."""
        moved = 0.0
        with torch.no_grad():
            for f in factors:
                for which, tensor in (("lora_A", f.A), ("lora_B", f.B)):
                    mean = self.curvature.tensors[f"{f.name}.{which}.mean"].to(tensor)
                    moved = max(moved, float((tensor - mean).abs().max()))
                    tensor.copy_(mean)
        if moved and lora_setup_of(self.curvature).get("init") == INIT_PEFT:
            log.info("the LoRA initialisation differs from the curvature's by up to %.3g (another peft or torch "
                     "version); the adaptation starts at the curvature's", moved)

    def on_train_start(self, trainer):
        super().on_train_start(trainer)
        if self.curvature is not None:
            self.layer_precision = {name: self._b_precision(name) for name in self._layers()}

    def _layers(self) -> list[str]:
        return [layer.name[: -len(".lora_B")] for layer in self.curvature.layers if layer.kind == "lora_B"]

    def _b_precision(self, name: str) -> float:
        """The mean Fisher precision of the layer's B entries (the mean of the diagonal of its B block)."""
        f = self.curvature.factors(f"{name}.lora_B")
        if "diag" in f:
            return float(f["diag"].mean())
        return float(f["A"].diagonal().mean() * f["G"].diagonal().mean())

    def __call__(self, factors: list[LoraFactors]) -> torch.Tensor:
        total = factors[0].A.new_zeros(()) if factors else torch.zeros(())
        for f in factors:
            total = total + self.layer(f)
        return total

    def layer(self, f: LoraFactors) -> torch.Tensor:
        ca, cb = self.curvature.factors(f"{f.name}.lora_A"), self.curvature.factors(f"{f.name}.lora_B")
        dA = f.A - ca["mean"].to(f.A.dtype)  # (r, in)
        dB = f.B - cb["mean"].to(f.B.dtype)  # (out, r)
        if "diag" in ca:
            pen = torch.sum(ca["diag"] * dA ** 2) + torch.sum(cb["diag"] * dB ** 2)
        else:  # vec(d)ᵀ (A ⊗ G) vec(d) = tr(dᵀ G d A) per factor
            pen = torch.sum((ca["G"] @ dA) * (dA @ ca["A"])) + torch.sum((cb["G"] @ dB) * (dB @ cb["A"]))
        if self.config.lalora_a_prior:
            precision = self.layer_precision[f.name] if f.name in self.layer_precision else self._b_precision(f.name)
            pen = pen + self.config.lalora_a_prior * precision * torch.sum(dA ** 2)
        if self.damping:
            pen = pen + self.damping * (torch.sum(dA ** 2) + torch.sum(dB ** 2))
        return pen
