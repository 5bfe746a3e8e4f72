"""Penalties on LoRA updates: the strategies ``lora``, ``l2``, ``diag``, ``kfac``, ``ekfac``.

The adaptation loss is ``L = L_tts(target) + (λ / 2) · Σ_layers P(ΔW)`` with

* ``lora``:  P = 0 (the forgetting baseline);
* ``l2``:    P = ‖ΔW‖²  (L2-SP);
* ``diag``:  P = Σ_ij F_ij ΔW_ij²  (EWC: diagonal Fisher);
* ``kfac``:  P = vec(ΔW)ᵀ (A_f ⊗ G_f) vec(ΔW) = s² · tr((Bᵀ G_f B)(A A_f Aᵀ)),
  two r × r matrices, never forming ΔW;
* ``ekfac``: P = Σ_ij S_ij ((Q_Gᵀ ΔW Q_A)_ij)², with Q_Gᵀ ΔW Q_A = s (Q_Gᵀ B)(A Q_A).

The Fisher factors are expectations per pretraining utterance (see
:mod:`tts_adapt.curvature`), so the penalty is the second-order increase of the
pretraining loss of *one* utterance, and λ counts pretraining utterances: λ = N
is the Laplace posterior of N utterances' worth of evidence. That reading does
not depend on the model or on how much data the curvature was fitted on.
``damping`` adds δ·‖ΔW‖² (a prior precision) to any curvature penalty.

Each strategy is one small class: :meth:`PenaltyStrategy.layer` is its P for one layer; the loop
gets ``(λ / 2) · P`` as the loss term ``penalty`` of every step.
"""

from __future__ import annotations

import logging
from abc import abstractmethod

import torch

from tts_adapt.adapt.lora import LoraFactors, lora_factors
from tts_adapt.adapt.strategies.base import Strategy, register_strategy
from tts_adapt.models.trainer import LossTerm

log = logging.getLogger(__name__)


def _l2(f: LoraFactors) -> torch.Tensor:
    # ‖s B A‖² = s² tr((BᵀB)(AAᵀ))
    return f.scale ** 2 * torch.sum((f.B.T @ f.B) * (f.A @ f.A.T))


class PenaltyStrategy(Strategy):
    """LoRA under (λ / 2) · Σ_layers P(ΔW); calling the strategy on a model's LoRA factors gives Σ P."""

    uses_lam = True
    #: λ of a run that sets none, in pretraining utterances: the knee of K-FAC's learning-forgetting curve on the
    #: embedded default, where forgetting stops falling while the target is learned as well as by plain LoRA
    #: (docs/results.md, "Choosing λ"; the quickstart's value)
    default_lam = 30000.0

    def __call__(self, factors: list[LoraFactors]) -> torch.Tensor:
        total = factors[0].A.new_zeros(()) if factors else torch.zeros(())
        for f in factors:
            total = total + self.layer(f)
            if self.damping:
                total = total + self.damping * _l2(f)
        return total

    @abstractmethod
    def layer(self, f: LoraFactors) -> torch.Tensor:
        """P for one layer (a scalar)."""

    def wrap(self, model, targets, trainable_rows=None):
        wrapped = super().wrap(model, targets, trainable_rows)
        self.check_layers(lora_factors(wrapped))
        return wrapped

    def check_layers(self, factors: list[LoraFactors]) -> None:
        """Refuse adapted layers the curvature does not cover, naming them."""
        if self.curvature is None:
            return
        missing = [f.name for f in factors if f.name not in self.curvature.layer_names]
        if missing:
            raise ValueError(f"the curvature file has no statistics for {len(missing)} adapted layer(s): "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; fit it for the "
                             "same --targets as the adaptation")

    def on_train_start(self, trainer):
        if self.curvature is not None:  # the factors go where the adapter is, once (not at every step)
            self.curvature = self.curvature.to(trainer.device)
        if not self.config.lam:  # asked for explicitly (an unset λ is the strategy's default), but say so
            log.warning("strategy %s at lam=0: the penalty is off and this run is plain LoRA", self.name)

    def loss_terms(self, trainer, batch):
        lam = self.config.lam
        # at λ = 0 the penalty is not computed: the term is an exact zero
        pen = self(lora_factors(self.model)) if lam else next(iter(trainer.params.values())).new_zeros(())
        return [LossTerm("penalty", pen, 0.5 * lam)]


@register_strategy
class NoPenalty(PenaltyStrategy):
    """Plain LoRA: the forgetting baseline (λ and damping have nothing to act on)."""

    name = "lora"
    uses_lam = False
    default_lam = 0.0

    def __init__(self, curvature=None, **kwargs):
        super().__init__(curvature, **kwargs)
        if self.config.lam:
            log.warning("strategy lora has no penalty; lam=%s is ignored", self.config.lam)

    def on_train_start(self, trainer):
        pass

    def __call__(self, factors):
        return factors[0].A.new_zeros(()) if factors else torch.zeros(())

    def layer(self, f):
        return f.A.new_zeros(())


@register_strategy
class L2Penalty(PenaltyStrategy):
    name = "l2"
    #: λ counts squared weights here, not utterances: at 1,000 the adapter hardly moves (docs/results.md)
    default_lam = 10.0

    def layer(self, f):
        return _l2(f)


@register_strategy
class DiagonalPenalty(PenaltyStrategy):
    name = "diag"
    curvature_method = "diag"

    def layer(self, f):
        F = self.curvature.factors(f.name)["diag"].to(f.A.dtype)  # (out, in)
        return torch.sum(F * f.delta() ** 2)


@register_strategy
class KFACPenalty(PenaltyStrategy):
    name = "kfac"
    curvature_method = "kfac"

    def layer(self, f):
        A_f = self.curvature.factors(f.name)["A"].to(f.A.dtype)  # (in, in)
        G_f = self.curvature.factors(f.name)["G"].to(f.A.dtype)  # (out, out)
        return f.scale ** 2 * torch.sum((f.B.T @ G_f @ f.B) * (f.A @ A_f @ f.A.T))


@register_strategy
class EKFACPenalty(PenaltyStrategy):
    name = "ekfac"
    curvature_method = "ekfac"

    def layer(self, f):
        Q_A = self.curvature.factors(f.name)["QA"].to(f.A.dtype)  # (in, in) eigenvectors of A_f
        Q_G = self.curvature.factors(f.name)["QG"].to(f.A.dtype)  # (out, out) eigenvectors of G_f
        S = self.curvature.factors(f.name)["S"].to(f.A.dtype)  # (out, in) re-fitted eigen-scalings
        rotated = f.scale * (Q_G.T @ f.B) @ (f.A @ Q_A)  # (out, in): ΔW in the Kronecker eigenbasis
        return torch.sum(S * rotated ** 2)
