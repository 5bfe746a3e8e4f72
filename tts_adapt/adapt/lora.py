"""peft LoRA on a backend's target layers, and the low-rank factors of each update.

Every adapted layer's update is ΔW = s · B A with B ``(out, r)``, A ``(r, in)`` and
s = alpha / r (peft's scaling). For a Conv1d, ``in`` = C_in · kernel and A is the
LoRA-A convolution's weight flattened channel-major (the order of ``F.unfold``
patches); B is the 1×1 LoRA-B convolution. A MultiheadAttention is adapted by
peft on its stacked q/k/v in-projection (``<name>.in_proj``, 3E × E) and on its
out-projection (``<name>.out_proj``, E × E).

A new voice of a speaker-ID-table model is a new row of the speaker embedding; that row
is trained with the adapter as peft's trainable tokens (``trainable_tokens``: the row's
values are saved in the adapter file and restored by ``PeftModel.from_pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ADAPTER_NAME = "default"
#: The peft release series whose LoRA ``MultiheadAttention`` :func:`exact_attention_forward` replaces (the
#: patch relies on that layer's internals; pyproject.toml pins peft to it).
PATCHED_PEFT_SERIES = "0.21"


@dataclass
class LoraFactors:
    """The low-rank update of one layer: ΔW = scale · B @ A."""

    name: str  # curvature/target name of the linear map (e.g. "decoder.x.self_attn.in_proj")
    A: torch.Tensor  # (r, in), differentiable view of the LoRA-A weight
    B: torch.Tensor  # (out, r)
    scale: float

    def delta(self) -> torch.Tensor:
        """ΔW ``(out, in)`` (dense; for tests and diagnostics)."""
        return self.scale * self.B @ self.A


def wrap_with_lora(model: nn.Module, targets: list[str], rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                   seed: int = 0, trainable_tokens: dict[str, list[int]] | None = None,
                   adapter_name: str = ADAPTER_NAME):
    """A peft ``PeftModel`` with LoRA on ``targets`` (module names of ``model``).

    LoRA-B starts at zero (peft's default), so the wrapped model starts out
    identical to the base model; the initialisation of LoRA-A is seeded.
    ``trainable_tokens`` (embedding module name -> row indices) are rows trained
    along with LoRA, starting from their current values (a new speaker's row).
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    modules = dict(model.named_modules())
    missing = [t for t in targets if t not in modules]
    if missing:
        raise ValueError(f"LoRA targets not found in the model: {', '.join(missing[:5])}")
    # peft builds a Conv1d's LoRA-A with the base layer's kernel, stride and padding but
    # not its dilation or groups, so such layers would get an update of the wrong shape
    unsupported = [t for t in targets if isinstance(modules[t], nn.Conv1d)
                   and (modules[t].dilation != (1,) or modules[t].groups != 1)]
    if unsupported:
        raise ValueError(f"LoRA cannot adapt dilated or grouped Conv1d layers: {', '.join(unsupported[:5])}; "
                         "leave them out of the targets")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        init_lora_weights=True, bias="none", trainable_token_indices=trainable_tokens or None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    exact_attention_forward(peft_model)
    return peft_model


def exact_attention_forward(model: nn.Module) -> None:
    """Give every peft LoRA ``MultiheadAttention`` in ``model`` a forward that computes W + ΔW exactly.

    peft's own forward (0.21) merges the update into the base weights and subtracts it
    again on every call; it adds out_proj's update twice (W_out + 2 ΔW_out, see
    huggingface/peft#3774), and the base weights drift by rounding with every call, so
    neither the penalty's ΔW nor an exact resume held. This forward puts W + ΔW in place
    of each weight for the call and then the original parameters back.
    """
    import types

    import peft
    from peft.tuners.lora import layer as lora_layer

    for module in model.modules():
        if isinstance(module, lora_layer.MultiheadAttention):
            if peft.__version__.split(".")[:2] != PATCHED_PEFT_SERIES.split("."):
                raise RuntimeError(
                    f"LoRA on attention layers is patched for peft {PATCHED_PEFT_SERIES}.x, but peft "
                    f"{peft.__version__} is installed; install the version pinned in pyproject.toml "
                    f"(peft {PATCHED_PEFT_SERIES}.x) or check tts_adapt.adapt.lora._attention_forward against "
                    "this peft's MultiheadAttention before widening the range")
            module.forward = types.MethodType(_attention_forward, module)


def _attention_forward(self, query: torch.Tensor, *args, **kwargs):
    from peft.tuners.lora import layer as lora_layer

    active = [a for a in self.active_adapters if a in self.lora_A]
    if self.disable_adapters or self.merged or not active:
        return lora_layer.MultiheadAttention.forward(self, query, *args, **kwargs)
    self._check_forward_args(query, *args, **kwargs)
    base = self.get_base_layer()
    out_wrapper = base.out_proj  # peft's LoRA Linear around out_proj (MultiheadAttention reads only its .weight)
    out_linear = out_wrapper.get_base_layer()
    w_in, w_out = base.in_proj_weight, out_linear.weight
    d_in = sum(self.get_delta_weight(a).to(w_in.dtype) for a in active)
    d_out = sum(out_wrapper.get_delta_weight(a).to(w_out.dtype) for a in active if a in out_wrapper.lora_A)
    del base.in_proj_weight, out_linear.weight
    base.in_proj_weight, out_linear.weight = w_in + d_in, w_out + d_out  # plain tensors, differentiable in ΔW
    try:
        result = base(query, *args, **kwargs)
    finally:
        del base.in_proj_weight, out_linear.weight
        base.register_parameter("in_proj_weight", w_in)
        out_linear.register_parameter("weight", w_out)
    return result[0].to(query.dtype), (result[1].to(query.dtype) if result[1] is not None else None)


def _strip(name: str) -> str:
    """Module name in the base model from a name inside the peft wrapper."""
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")


def lora_factors(peft_model: nn.Module, adapter_name: str = ADAPTER_NAME) -> list[LoraFactors]:
    """The (A, B, scale) of adapter ``adapter_name`` in every LoRA layer, named by the linear map they update."""
    from peft.tuners.lora import layer as lora_layer

    factors = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, lora_layer.LoraLayer) or adapter_name not in module.lora_A:
            continue
        a_mod, b_mod = module.lora_A[adapter_name], module.lora_B[adapter_name]
        scale = float(module.scaling[adapter_name])
        A = a_mod.weight.reshape(a_mod.weight.shape[0], -1)  # (r, in) (Conv1d: (r, C_in * k))
        B = b_mod.weight.reshape(b_mod.weight.shape[0], -1)  # (out, r)
        base = _strip(name)
        if isinstance(module, lora_layer.MultiheadAttention):
            base = f"{base}.in_proj"
        factors.append(LoraFactors(base, A, B, scale))
    return factors


def is_adapter_parameter(name: str) -> bool:
    """A parameter the adapter trains and saves: LoRA factors and trainable embedding rows."""
    return "lora_" in name or "trainable_tokens_delta" in name


def adapter_parameters(peft_model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter's trainable parameters by name, in the model's order."""
    return {n: p for n, p in peft_model.named_parameters() if is_adapter_parameter(n) and p.requires_grad}
