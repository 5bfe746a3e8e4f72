"""Recording what the curvature needs from the target layers, each seen as a linear map y = W x.

Inside :func:`record_linear_maps` every target layer reports, per forward call, its
inputs ``x`` (B, T, in) and which of the T positions are real (not padding); in the
following backward pass the gradient of the loss w.r.t. the layer output ``g``
(B, T, out) is added. Statistics (K-FAC factors, per-utterance gradients) are
computed from these records by :mod:`tts_adapt.curvature.fit`; this module only
collects. The hooks are removed when the context ends, also on an error.

How each module type becomes a linear map (the weight as an ``out x in`` matrix):

* ``nn.Linear``: inputs ``(..., in)``; ``(B, in)`` is one position per utterance,
  ``(B, T, in)`` and ``(T, B, in)`` are told apart by the batch size of the masks.
* ``nn.Conv1d`` (``groups == 1``): a linear map on unfolded input patches,
  ``in = C_in * kernel`` (channel-major, matching ``weight.reshape(out, -1)``), one
  position per output frame; stride, dilation and padding (also ``"same"`` and
  non-zero padding modes) are those of the convolution.
* ``nn.MultiheadAttention`` (self-attention, ``query is key is value``, equal q/k/v
  dimensions): two maps. ``<name>.in_proj`` is ``in_proj_weight`` (3E x E), applied to
  the attention input at every position, its output the stacked q, k, v.
  ``<name>.out_proj`` is ``out_proj.weight`` (E x E), applied to the attention
  context (the heads' concatenated outputs). PyTorch computes both projections
  inside ``F.multi_head_attention_forward`` (the ``out_proj`` submodule's own hooks
  never fire), so the module's forward hook re-runs the attention core from the
  input with identity projections to get the context (checked against the module's
  output), and the gradient w.r.t. its output gives the out-projection gradients
  directly and, through a vector-Jacobian product of the re-run core, the q/k/v
  gradients. Needs dropout off (eval mode) and the attention weights not feeding
  the loss (both checked).

Biases are left out: the statistics are those of the weight only (no constant 1
appended to the inputs), matching the LoRA update ΔW that the penalty acts on.

Padding: the caller sets :attr:`LinearMapRecorder.masks`, the batch's (B, T_i) masks
(e.g. mel frames and text tokens, True on real positions). A layer's positions are
matched to the mask whose length equals its time axis (for Conv1d the *output*
frames: a position counts when its output frame is real); the choice is remembered
per layer, so a batch where two axes happen to have the same length still works
once the layer has been seen in an unambiguous batch. A time axis of length 1
(e.g. a per-utterance speaker projection) is always real.

One backward pass per forward pass: a second backward overwrites the gradients.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("linear", "conv1d", "attention_in", "attention_out")


class UnsupportedLayerError(ValueError):
    """A target layer the curvature cannot treat as a linear map."""


class PositionMaskError(ValueError):
    """The real (non-padding) positions of a layer's inputs cannot be told."""


@dataclass(frozen=True)
class LinearMap:
    """One weight matrix of a target layer. ``name`` is the module name, or ``<module>.in_proj`` /
    ``<module>.out_proj`` for attention; ``param`` the weight's full parameter name."""

    name: str
    module: str
    param: str
    kind: str
    out_features: int
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)


def linear_maps(model: nn.Module, targets: Sequence[str]) -> list[LinearMap]:
    """The linear maps of the target modules, in the order of ``targets``; refuses what it cannot treat."""
    modules = dict(model.named_modules())
    maps: list[LinearMap] = []
    for name in targets:
        if name not in modules:
            raise UnsupportedLayerError(f"{name!r} is not a module of the model")
        m = modules[name]
        if isinstance(m, nn.Linear):
            parent_name, _, attr = name.rpartition(".")
            if attr == "out_proj" and isinstance(modules.get(parent_name), nn.MultiheadAttention):
                raise UnsupportedLayerError(
                    f"{name!r} is the output projection of an attention module, which PyTorch never calls as a "
                    f"module; target the attention module {parent_name!r} instead")
            maps.append(LinearMap(name, name, _join(name, "weight"), "linear", m.out_features, m.in_features))
        elif isinstance(m, nn.Conv1d):
            if m.groups != 1:
                raise UnsupportedLayerError(f"{name!r}: Conv1d with groups={m.groups} is not supported (only groups=1)")
            maps.append(LinearMap(name, name, _join(name, "weight"), "conv1d", m.out_channels,
                                  m.in_channels * m.kernel_size[0]))
        elif isinstance(m, nn.MultiheadAttention):
            if not m._qkv_same_embed_dim:
                raise UnsupportedLayerError(f"{name!r}: attention with separate key/value dimensions "
                                            "(kdim/vdim) is not supported")
            E = m.embed_dim
            maps.append(LinearMap(_join(name, "in_proj"), name, _join(name, "in_proj_weight"), "attention_in",
                                  3 * E, E))
            maps.append(LinearMap(_join(name, "out_proj"), name, _join(name, "out_proj.weight"), "attention_out", E, E))
        else:
            raise UnsupportedLayerError(f"{name!r} is a {type(m).__name__}; supported: Linear, Conv1d, "
                                        "MultiheadAttention")
    return maps


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def weight_of(model: nn.Module, lm: LinearMap) -> torch.Tensor:
    """The (effective) weight tensor of ``lm`` as the module uses it; also for parametrized modules (e.g.
    weight norm), whose ``weight`` is computed from other parameters."""
    module = model.get_submodule(lm.module)
    if lm.kind == "attention_in":
        return module.in_proj_weight
    if lm.kind == "attention_out":
        return module.out_proj.weight
    return module.weight


def conv1d_patches(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Input patches of a Conv1d: x (B, C_in, T) -> (B, T_out, C_in * kernel), so that
    ``patches @ weight.reshape(out, -1).T + bias`` is the convolution's output transposed."""
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    if isinstance(conv.padding, str):  # "valid" or "same" (PyTorch puts an odd extra frame on the right)
        total = 0 if conv.padding == "valid" else d * (k - 1)
        left, right = total // 2, total - total // 2
    else:
        left = right = conv.padding[0]
    if left or right:
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, (left, right), mode=mode)
    patches = F.unfold(x.unsqueeze(2), kernel_size=(1, k), dilation=(1, d), stride=(1, s))  # (B, C*k, T_out)
    return patches.transpose(1, 2)


@dataclass
class LayerCall:
    """One forward call of a linear map: ``inputs`` (B, T, in), ``mask`` (B, T) True on real positions,
    ``grads`` (B, T, out) the gradient w.r.t. the output, set in the backward pass (None if no gradient
    reached the layer)."""

    inputs: torch.Tensor
    mask: torch.Tensor
    grads: torch.Tensor | None = None


@dataclass
class LinearMapRecorder:
    """What the hooks collect. Set :attr:`masks` before each forward pass; read :attr:`calls` after the
    backward pass; :meth:`clear` between batches."""

    maps: dict[str, LinearMap]
    masks: tuple[torch.Tensor, ...] = ()
    calls: dict[str, list[LayerCall]] = field(default_factory=dict)
    _axis: dict[str, int] = field(default_factory=dict)  # layer -> index of its mask in `masks`
    _time_first: dict[str, bool] = field(default_factory=dict)  # Linear layers with 3-D inputs

    def __post_init__(self):
        self.clear()

    def clear(self) -> None:
        self.calls = {name: [] for name in self.maps}

    @property
    def batch_size(self) -> int | None:
        return int(self.masks[0].shape[0]) if self.masks else None

    def positions(self, name: str, batch: int, time: int) -> torch.Tensor:
        """The (batch, time) mask of real positions of layer ``name``."""
        if time == 1 or not self.masks:
            return torch.ones(batch, time, dtype=torch.bool)
        candidates = [i for i, m in enumerate(self.masks) if tuple(m.shape) == (batch, time)]
        if not candidates:
            shapes = ", ".join(str(tuple(m.shape)) for m in self.masks)
            raise PositionMaskError(f"layer {name!r}: its inputs have {time} positions for {batch} utterances, but "
                                    f"the batch's masks have shapes {shapes}; cannot tell real positions from padding")
        known = self._axis.get(name)
        if known in candidates:
            return self.masks[known].bool()
        if len(candidates) == 1:
            self._axis.setdefault(name, candidates[0])
            return self.masks[candidates[0]].bool()
        first = self.masks[candidates[0]]
        if all(torch.equal(self.masks[i], first) for i in candidates[1:]):
            return first.bool()  # same positions either way; the axis stays unknown
        raise PositionMaskError(
            f"layer {name!r}: its {time} positions match several different masks of the batch (e.g. as many mel "
            "frames as text tokens), and the layer has not been seen in a batch that tells them apart")

    def add(self, name: str, inputs: torch.Tensor, mask: torch.Tensor) -> LayerCall:
        call = LayerCall(inputs.detach(), mask)
        self.calls[name].append(call)
        return call

    # ------------------------------------------------------------------ layouts
    def linear_layout(self, name: str, x: torch.Tensor) -> tuple[int, int, bool]:
        """(B, T, time_first) of a Linear input ``x`` (..., in)."""
        B = self.batch_size
        if x.dim() == 1:
            return 1, 1, False
        if x.dim() == 2:
            if B is not None and x.shape[0] != B:
                raise UnsupportedLayerError(f"layer {name!r}: 2-D input with {x.shape[0]} rows for a batch of {B} "
                                            "utterances; cannot assign its rows to utterances")
            return x.shape[0], 1, False
        if x.dim() != 3:
            raise UnsupportedLayerError(f"layer {name!r}: inputs with {x.dim()} dimensions are not supported")
        a, b = x.shape[0], x.shape[1]
        if B is None or (a == B and b != B) or a == b == 1:
            time_first = False
        elif b == B and a != B:
            time_first = True
        elif a == b == B and name in self._time_first:
            time_first = self._time_first[name]
        elif a == b == B:
            raise PositionMaskError(f"layer {name!r}: input {tuple(x.shape)} has batch and time axes of the same "
                                    "length; cannot tell which is which")
        else:
            raise UnsupportedLayerError(f"layer {name!r}: input {tuple(x.shape)} has no axis of the batch size {B}")
        self._time_first[name] = time_first
        return (b, a, True) if time_first else (a, b, False)


def _to_btc(t: torch.Tensor, B: int, T: int, time_first: bool) -> torch.Tensor:
    """A Linear input/output (..., C) as (B, T, C)."""
    if time_first:
        return t.transpose(0, 1)
    return t.reshape(B, T, t.shape[-1])


# --------------------------------------------------------------------------- the hooks
def _linear_hook(recorder: LinearMapRecorder, name: str):
    def hook(module, args, output):
        x = args[0]
        B, T, time_first = recorder.linear_layout(name, x)
        call = recorder.add(name, _to_btc(x, B, T, time_first), recorder.positions(name, B, T))
        if output.requires_grad:
            def store(g):
                call.grads = _to_btc(g, B, T, time_first).detach()
            output.register_hook(store)
    return hook


def _conv1d_hook(recorder: LinearMapRecorder, name: str):
    def hook(module, args, output):
        x = args[0]
        if x.dim() == 2:  # unbatched (C, T)
            x, output_btc = x.unsqueeze(0), (lambda g: g.unsqueeze(0).transpose(1, 2))
        else:
            output_btc = (lambda g: g.transpose(1, 2))
        patches = conv1d_patches(x.detach(), module)
        B, T = patches.shape[:2]
        call = recorder.add(name, patches, recorder.positions(name, B, T))
        if output.requires_grad:
            def store(g):
                call.grads = output_btc(g).detach()
            output.register_hook(store)
    return hook


def _attention_hook(recorder: LinearMapRecorder, name: str):
    """Forward hook (with kwargs) of a self-attention module: records both projections (see module doc)."""
    in_name, out_name = _join(name, "in_proj"), _join(name, "out_proj")

    def hook(mha: nn.MultiheadAttention, args, kwargs, output):
        bound = inspect.signature(mha.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        query, key, value = a["query"], a["key"], a["value"]
        if not (query is key and key is value):
            raise UnsupportedLayerError(f"{name!r}: only self-attention (query, key and value the same tensor) "
                                        "has an in-projection that is one linear map")
        if mha.training and mha.dropout > 0:
            raise UnsupportedLayerError(f"{name!r}: attention dropout is active; put the model in eval mode")
        batched = query.dim() == 3
        x = query if batched else query.unsqueeze(1)
        if batched and mha.batch_first:
            x = x.transpose(0, 1)  # (L, N, E), the layout of F.multi_head_attention_forward
        padding = a["key_padding_mask"]
        if padding is not None and not batched:
            padding = padding.unsqueeze(0)
        L, N, E = x.shape
        with torch.enable_grad():
            qkv, context = _attention_core(mha, x.detach(), padding, a)
        attn_out = output[0]
        out = attn_out if batched else attn_out.unsqueeze(1)
        if batched and mha.batch_first:
            out = out.transpose(0, 1)
        rebuilt = F.linear(context.detach(), mha.out_proj.weight, mha.out_proj.bias)
        if (rebuilt - out).norm() > 1e-4 * out.norm() + 1e-6:
            raise RuntimeError(f"{name!r}: could not reproduce the attention output from its input; "
                               "the curvature of this layer cannot be recorded")
        mask = recorder.positions(name, N, L)
        in_call = recorder.add(in_name, x.transpose(0, 1), mask)
        out_call = recorder.add(out_name, context.detach().transpose(0, 1), mask)
        if attn_out.requires_grad:
            def store(g):
                g = g if batched else g.unsqueeze(1)
                if batched and mha.batch_first:
                    g = g.transpose(0, 1)  # (L, N, E)
                out_call.grads = g.transpose(0, 1).detach()
                g_context = g @ mha.out_proj.weight.detach()
                (g_qkv,) = torch.autograd.grad(context, qkv, g_context)
                in_call.grads = g_qkv.transpose(0, 1).detach()
            attn_out.register_hook(store)
        weights = output[1]
        if weights is not None and weights.requires_grad:
            def refuse(g):
                if g.abs().sum() > 0:
                    raise UnsupportedLayerError(f"{name!r}: the attention weights feed the loss; the in-projection "
                                                "gradients would be incomplete")
            weights.register_hook(refuse)

    return hook


def _attention_core(mha: nn.MultiheadAttention, x: torch.Tensor, padding, a: dict):
    """Re-run ``mha`` on x (L, N, E) with identity projections: (qkv (L, N, 3E) requiring grad, context (L, N, E))."""
    E = mha.embed_dim
    bias = None if mha.in_proj_bias is None else mha.in_proj_bias.detach()
    qkv = F.linear(x, mha.in_proj_weight.detach(), bias).requires_grad_()
    q, k, v = qkv.chunk(3, dim=-1)
    eye = torch.eye(E, dtype=x.dtype, device=x.device)
    detached = (lambda p: None if p is None else p.detach())
    context, _ = F.multi_head_attention_forward(
        q, k, v, E, mha.num_heads, None, None, detached(mha.bias_k), detached(mha.bias_v), mha.add_zero_attn,
        0.0, eye, None, training=False, key_padding_mask=padding, need_weights=a["need_weights"],
        attn_mask=a["attn_mask"], use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye,
        v_proj_weight=eye, average_attn_weights=a["average_attn_weights"], is_causal=a["is_causal"])
    return qkv, context


@contextlib.contextmanager
def record_linear_maps(model: nn.Module, targets: Sequence[str],
                       masks: Sequence[torch.Tensor] = ()) -> Iterator[LinearMapRecorder]:
    """Record inputs and output gradients of the ``targets`` modules of ``model`` while the context is open.

    ``masks``: the batch's (B, T_i) masks of real positions (can be changed later through
    ``recorder.masks``); none means every position is real. Yields the :class:`LinearMapRecorder`.
    """
    maps = linear_maps(model, targets)
    recorder = LinearMapRecorder({m.name: m for m in maps}, tuple(masks))
    handles = []
    try:
        for name in dict.fromkeys(m.module for m in maps):
            module = model.get_submodule(name)
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_hook(_attention_hook(recorder, name), with_kwargs=True))
            elif isinstance(module, nn.Conv1d):
                handles.append(module.register_forward_hook(_conv1d_hook(recorder, name)))
            else:
                handles.append(module.register_forward_hook(_linear_hook(recorder, name)))
        yield recorder
    finally:
        for h in handles:
            h.remove()
