"""Selective LoRA: the strategy ``selective``, LoRA blocks switched on and off by learned indicator gates.

Every LoRA block, the update ΔW_i = s · B_i A_i of one adapted weight matrix (an attention layer has two: its
stacked q/k/v in-projection and its out-projection), gets one learnable score σ_i and contributes only while
its gate is open::

    y = W_i x + g_i · s · B_i A_i x,        g_i = 1[σ_i ≥ τ]            (τ: ``gate_threshold``)

(selective LoRA, Bafghi et al. 2025, built on TAPS, Wallingford et al. 2022). The indicator's derivative is
zero almost everywhere, so the straight-through estimator passes the gradient of the gated output on to the
score as if the gate were the identity: ∂L/∂σ_i = ∂L/∂g_i = Σ ⟨∂L/∂y, s B_i A_i x⟩, the first-order change
of the loss if the block were switched off. It is exactly zero while B_i = 0 (LoRA's start: the first step)
and small while B_i is small; the L1 penalty ``gate_l1 · Σ_i |σ_i|`` would then push every score down with
nothing holding it up, so it is switched on only after ``gate_warmup`` steps. From then on a block stays open while it lowers the loss by more than
``gate_l1`` per unit of gate.

Scores start at τ + ``gate_margin``: every gate starts open, and until the first one closes the run is plain
LoRA. With AdamW a score moves by about the learning rate per step whatever the size of its gradient, so
``gate_margin / lr`` is about the fewest steps in which a block can close after the warm-up (TAPS starts its
scores at 0.15 against a threshold of 0.1; the defaults here keep its threshold and start closer to it, see
docs/strategy-selective.md).

The gate multiplies peft's scaling s of the block for the duration of each forward call of its LoRA layer
(a forward pre-hook sets ``scaling`` to ``s · g_i``, a forward hook puts the plain number back), so it
reaches every path peft computes the update on: ``lora_B(lora_A(x)) · s`` for Linear and Conv1d, and
``get_delta_weight`` for attention, whose out-projection's LoRA layer is never called itself and is gated by
its attention layer's hooks.

The scores are trained, checkpointed, restored to the best validation's and resumed with the LoRA weights
(they are parameters of the LoRA layers, named ``…selective_score``, outside the adapter file). Each step's
row of the learning curve has ``active_fraction``; the run record (run.json) has the blocks, their scores and
which were active. The saved adapter holds the active blocks only (:meth:`SelectiveLoRA.before_save`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from tts_adapt.adapt.lora import ADAPTER_NAME, adapter_parameters
from tts_adapt.adapt.strategies.base import Strategy, register_strategy
from tts_adapt.models.trainer import LossTerm

log = logging.getLogger(__name__)
SCORE = "selective_score"  # the score's parameter name on its LoRA layer (no "lora_": peft does not save it)


def straight_through_gate(score: torch.Tensor, threshold: float) -> torch.Tensor:
    """1[score ≥ threshold] in the forward pass, with the gradient of the identity in the backward pass.

    ``score - score.detach()`` is exactly 0 for a finite score, so the value is exactly 0 or 1.
    """
    return (score >= threshold).to(score.dtype) + (score - score.detach())


@dataclass
class GatedBlock:
    """One LoRA block: the update of one weight matrix, gated through its LoRA layer's scaling."""

    name: str  # the adapted linear map, as :func:`tts_adapt.adapt.lora.lora_factors` names it
    layer: nn.Module  # the peft LoRA layer holding lora_A / lora_B / scaling of this update
    score: nn.Parameter  # σ, a scalar
    scale: float  # peft's scaling s = alpha / r (a plain number)

    def parameter_count(self) -> int:
        return self.layer.lora_A[ADAPTER_NAME].weight.numel() + self.layer.lora_B[ADAPTER_NAME].weight.numel()


@dataclass
class GatedLayer:
    """A top-level peft LoRA layer (a target module) and the blocks it carries: one, or two for attention."""

    name: str  # the module's name in the base model, the name in peft's ``target_modules``
    module: nn.Module
    blocks: list[GatedBlock] = field(default_factory=list)


def gated_layers(peft_model: nn.Module, init: float) -> list[GatedLayer]:
    """Every LoRA layer of ``peft_model`` (a peft ``PeftModel``) with one new score per block, initialised to
    ``init``, registered on the block's LoRA layer."""
    from peft.tuners.lora import layer as lora_layer

    layers: list[GatedLayer] = []
    for name, module in peft_model.get_base_model().named_modules():
        if not isinstance(module, lora_layer.LoraLayer) or ADAPTER_NAME not in module.lora_A:
            continue
        if any(name.startswith(outer.name + ".") for outer in layers):
            continue  # an attention layer's out-projection: a block of that attention layer, below
        if isinstance(module, lora_layer.MultiheadAttention):
            parts = [(f"{name}.in_proj", module), (f"{name}.out_proj", module.get_base_layer().out_proj)]
        else:
            parts = [(name, module)]
        gated = GatedLayer(name, module)
        for block_name, layer in parts:
            weight = layer.lora_A[ADAPTER_NAME].weight
            score = nn.Parameter(torch.tensor(float(init), dtype=torch.float32, device=weight.device))
            layer.register_parameter(SCORE, score)
            gated.blocks.append(GatedBlock(block_name, layer, score, layer.scaling[ADAPTER_NAME]))
        layers.append(gated)
    if not layers:
        raise ValueError("the model has no LoRA layers to gate (no adapted target layers)")
    return layers


def _unwrapped(module: nn.Module) -> nn.Module:
    """The base layer of a peft LoRA layer, with an attention layer's out-projection unwrapped too."""
    from peft.tuners.lora import layer as lora_layer

    base = module.get_base_layer()
    if isinstance(module, lora_layer.MultiheadAttention):
        base.out_proj = base.out_proj.get_base_layer()
    return base


@register_strategy
class SelectiveLoRA(Strategy):
    """LoRA with one learned indicator gate per block and an L1 penalty on the gates' scores (module doc)."""

    name = "selective"

    def __init__(self, curvature=None, **kwargs):
        super().__init__(curvature, **kwargs)
        if self.config.lam:
            log.warning("strategy selective has no λ; lam=%s is ignored (its sparsity strength is gate_l1)",
                        self.config.lam)
        self.layers: list[GatedLayer] = []
        self.blocks: list[GatedBlock] = []
        self._hooks: list = []
        self.saved: dict | None = None  # what before_save did, for the run record

    @property
    def threshold(self) -> float:
        return self.config.gate_threshold

    # ------------------------------------------------------------------ wrapping and gating
    def wrap(self, model, targets, trainable_rows=None):
        wrapped = super().wrap(model, targets, trainable_rows)
        c = self.config
        self.layers = gated_layers(wrapped, c.gate_threshold + c.gate_margin)
        self.blocks = [b for layer in self.layers for b in layer.blocks]
        for layer in self.layers:
            self._hooks.append(layer.module.register_forward_pre_hook(self._gating(layer.blocks)))
            self._hooks.append(layer.module.register_forward_hook(self._ungating(layer.blocks), always_call=True))
        return wrapped

    def _gating(self, blocks: list[GatedBlock]):
        def open_gates(module, args):
            for b in blocks:
                b.layer.scaling[ADAPTER_NAME] = b.scale * straight_through_gate(b.score, self.threshold)
        return open_gates

    @staticmethod
    def _ungating(blocks: list[GatedBlock]):
        def restore(module, args, output):  # the plain number again, for peft and lora_factors between calls
            for b in blocks:
                b.layer.scaling[ADAPTER_NAME] = b.scale
        return restore

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        scores = {id(b.score) for b in self.blocks}
        named = {n: p for n, p in self.model.named_parameters() if id(p) in scores}
        return {**adapter_parameters(self.model), **named}

    def scores(self) -> torch.Tensor:
        """The blocks' scores ``(n_blocks,)`` (detached, in block order)."""
        return torch.stack([b.score.detach() for b in self.blocks])

    def active(self) -> list[bool]:
        """Whether each block's gate is open, in block order."""
        return (self.scores() >= self.threshold).tolist()

    def active_fraction(self) -> float:
        active = self.active()
        return sum(active) / len(active)

    # ------------------------------------------------------------------ the loop's moments
    def on_train_start(self, trainer):
        if self.config.gate_l1 and self.config.gate_warmup >= trainer.config.steps:
            log.warning("gate_warmup (%d) is not below steps (%d): the L1 penalty never starts and no block "
                        "closes for sparsity", self.config.gate_warmup, trainer.config.steps)

    def loss_terms(self, trainer, batch):
        l1 = torch.stack([b.score for b in self.blocks]).abs().sum()
        if trainer.step < self.config.gate_warmup or not self.config.gate_l1:
            return [LossTerm("score_l1", l1.detach(), 0.0)]  # logged, not trained on
        return [LossTerm("score_l1", l1, self.config.gate_l1)]

    def on_train_batch_end(self, trainer, row, parts):
        row["active_fraction"] = self.active_fraction()

    # ------------------------------------------------------------------ saving
    def before_save(self) -> None:
        """Drop the inactive blocks from the model, so that the saved adapter holds the active ones only and
        gives the gated model's output.

        A LoRA layer whose blocks are all inactive is replaced by its base layer and left out of peft's
        ``target_modules``. peft adapts an attention layer's in- and out-projection as one target, so when only
        one of the two is inactive, that one stays in the file with LoRA-B = 0 (its update is zero, as its
        gate made it). When every block is inactive, peft could not load an adapter without a layer; the
        adapter then keeps the layer with the fewest LoRA weights, with LoRA-B = 0: it still loads, carries
        the target's speaker conditioning and speaks as the gated model did (the base model's layers).
        """
        active = dict(zip((b.name for b in self.blocks), self.active()))
        scores = dict(zip((b.name for b in self.blocks), self.scores().tolist()))
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        keep = [layer for layer in self.layers if any(active[b.name] for b in layer.blocks)]
        drop = [layer for layer in self.layers if layer not in keep]
        if not keep:
            smallest = min(drop, key=lambda layer: (sum(b.parameter_count() for b in layer.blocks), layer.name))
            drop.remove(smallest)
            keep.append(smallest)
            log.warning("every LoRA block is inactive: the adapter keeps %s with a zero update, so that peft can "
                        "load it; it speaks as the base model with the target's conditioning (lower gate_l1 "
                        "for an adapter that learns)", smallest.name)
        zeroed = []
        with torch.no_grad():
            for layer in keep:
                for b in layer.blocks:
                    if not active[b.name]:
                        b.layer.lora_B[ADAPTER_NAME].weight.zero_()
                        zeroed.append(b.name)
        inner = self.model.get_base_model()
        for layer in drop:
            parent, _, child = layer.name.rpartition(".")
            setattr(inner.get_submodule(parent) if parent else inner, child, _unwrapped(layer.module))
        for b in self.blocks:  # the scores are no part of the adapter
            if hasattr(b.layer, SCORE):
                delattr(b.layer, SCORE)
        self.model.peft_config[ADAPTER_NAME].target_modules = {layer.name for layer in keep}
        self.saved = {"active": active, "scores": scores, "zeroed": zeroed,
                      "dropped": [b.name for layer in drop for b in layer.blocks]}
        self.layers = keep

    def run_record(self) -> dict:
        """The gates of the run, for run.json: blocks, scores, which were active and what the adapter holds."""
        if self.saved is not None:
            active, scores = self.saved["active"], self.saved["scores"]
        else:
            active = dict(zip((b.name for b in self.blocks), self.active()))
            scores = dict(zip((b.name for b in self.blocks), self.scores().tolist()))
        n_active = sum(active.values())
        record = {"blocks": len(active), "active_blocks": n_active,
                  "active_fraction": n_active / len(active) if active else 0.0,
                  "threshold": self.threshold, "scores": scores,
                  "inactive": [name for name, on in active.items() if not on]}
        if self.saved is not None:
            record["dropped_from_adapter"] = self.saved["dropped"]
            record["zero_in_adapter"] = self.saved["zeroed"]
        return {"selective": record}
