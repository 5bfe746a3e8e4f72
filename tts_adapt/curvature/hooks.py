"""Recording what the curvature needs from the target layers, each seen as a linear map y = W x.

Inside :func:`record_linear_maps` every target layer reports, per forward call, its
inputs ``x`` (B, T, in) and which of the T positions are real (not padding); in the
following backward pass the gradient of the loss w.r.t. the layer output ``g``
(B, T, out) is added. Each record (:class:`LayerCall`) offers the sums the statistics are
made of (the Gram matrices of its inputs and gradients over real positions, per-utterance
weight gradients), computed where its tensors are, in float32 at least;
:mod:`tts_adapt.curvature.fit` adds them up. The hooks are removed when the context ends, also
on an error. No tensor is created on a fixed device: everything follows the layer's inputs.

How each module type becomes a linear map (the weight as an ``out x in`` matrix):

* ``nn.Linear``: inputs ``(..., in)``; ``(B, in)`` is one position per utterance,
  ``(B, T, in)`` and ``(T, B, in)`` are told apart by the batch size of the masks.
* ``nn.Conv1d`` (``groups == 1``): a linear map on unfolded input patches,
  ``in = C_in * kernel`` (channel-major, matching ``weight.reshape(out, -1)``), one
  position per output frame; stride, dilation and padding (also ``"same"`` and
  non-zero padding modes) are those of the convolution. The record keeps the padded input,
  not the patches (kernel times its size): the patches of a kernel-k convolution are k shifted
  copies of the input, so the Gram matrix of the patches is assembled from k lagged Gram
  matrices of the input (plus small corrections where the utterances' edges shift), and the
  per-utterance gradients from k products with shifted views (:meth:`LayerCall.input_gram`,
  :meth:`LayerCall.weight_grads`). ``LayerCall.inputs`` still makes the patches when asked.
* ``nn.MultiheadAttention`` (self-attention, ``query is key is value``, equal q/k/v
  dimensions): two maps. ``<name>.in_proj`` is ``in_proj_weight`` (3E x E), applied to
  the attention input at every position, its output the stacked q, k, v.
  ``<name>.out_proj`` is ``out_proj.weight`` (E x E), applied to the attention
  context (the heads' concatenated outputs). PyTorch computes both projections
  inside ``F.multi_head_attention_forward`` (the ``out_proj`` submodule's own hooks
  never fire), so the hook reads them from the autograd graph of the call: the matrix product
  of the out-projection saved its input, the context, and a pre-hook on the matrix product of
  the in-projection receives the gradient w.r.t. the stacked q, k, v; the gradient w.r.t. the
  output is the out-projection's. These are the very tensors of the model's forward and
  backward, and nothing is computed twice. Where the graph does not show the two products
  (no gradients, or a weight that is not a leaf tensor requiring grad), the hook re-runs the
  attention core from the input with identity projections instead (checked against the
  module's output) and gets the q/k/v gradients through a vector-Jacobian product of the
  re-run core, which needs the attention weights not to feed the loss (checked). Needs
  dropout off (eval mode; checked).

Biases are left out: the statistics are those of the weight only (no constant 1
appended to the inputs), matching the LoRA update ΔW that the penalty acts on.

Padding: the caller sets :attr:`LinearMapRecorder.masks`, the batch's (B, T_i) masks
(e.g. mel frames and text tokens, True on real positions). A layer's positions are
matched to the mask whose length equals its time axis (for Conv1d the *output*
frames: a position counts when its output frame is real); the choice is remembered
per layer, so a batch where two axes happen to have the same length still works
once the layer has been seen in an unambiguous batch. A time axis of length 1
(e.g. a per-utterance speaker projection) is always real.

One backward pass per forward pass: a second backward overwrites the gradients. A ``backward()`` delivers
the output gradients through hooks; :func:`layer_gradients` asks autograd for them alone, which skips the
weight gradients (the fit's way: it needs no weight gradient).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

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
    return _unfold(_pad_conv_input(x, conv), k, s, d)


def _pad_conv_input(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """x (B, C_in, T) padded as the convolution pads it, (B, C_in, T_padded), in a layout where the frames of
    all utterances are the rows of one (frames, C_in) matrix without a copy, which is what the Gram matrices
    multiply: time-major (a view of a contiguous (T_padded, B, C_in) tensor) when x is already laid out so
    (coqui's transformer blocks hand their convolutions a permuted (T, B, C) tensor) and the padding is zeros,
    else channel-major (a view of a contiguous (C_in, B, T_padded) tensor). Either is one copy of x."""
    (k,), (d,) = conv.kernel_size, conv.dilation
    if isinstance(conv.padding, str):  # "valid" or "same" (PyTorch puts an odd extra frame on the right)
        total = 0 if conv.padding == "valid" else d * (k - 1)
        left, right = total // 2, total - total // 2
    else:
        left = right = conv.padding[0]
    if x.permute(2, 0, 1).is_contiguous() and (conv.padding_mode == "zeros" or not (left or right)):
        return F.pad(x.permute(2, 0, 1), (0, 0, 0, 0, left, right)).permute(1, 2, 0)
    x = x.transpose(0, 1)
    if left or right:
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, (left, right), mode=mode)
    return x.contiguous().transpose(0, 1)


def _unfold(padded: torch.Tensor, k: int, s: int, d: int) -> torch.Tensor:
    """The patches (B, T_out, C_in * k) of a padded Conv1d input (B, C_in, T_padded)."""
    patches = F.unfold(padded.unsqueeze(2), kernel_size=(1, k), dilation=(1, d), stride=(1, s))  # (B, C*k, T_out)
    return patches.transpose(1, 2)


def _stat_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 tensors: statistics are never computed at half precision. Under autocast
    the inputs and gradients of a layer may be bf16 / fp16, whose 8 or 11 bits of mantissa sums over thousands
    of positions would round away, so they are cast first."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _gram(t: torch.Tensor, mask: torch.Tensor, finite: bool) -> torch.Tensor:
    """Σ over the real positions of v vᵀ, v the last axis of t (B, T, C): the Gram matrix of the rows with
    padding zeroed, which are written in one pass whatever t's memory layout and dtype. ``finite``: multiply
    by the mask, exact when the padding holds finite numbers and four times faster than ``torch.where``,
    which sets the padding to 0 whatever it holds (also inf or nan)."""
    B, T, C = t.shape
    rows = t.new_empty((B * T, C), dtype=_stat_dtype(t))
    if finite:
        torch.mul(t, mask[..., None], out=rows.view(B, T, C))
    else:
        torch.where(mask[..., None], t, t.new_zeros(()), out=rows.view(B, T, C))
    return _symmetric_product(rows)


#: Column blocks of :func:`_symmetric_product`.
GRAM_BLOCK = 64


def _symmetric_product(rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """rowsᵀ rows (C, C), into ``out`` if given. On a CPU only the blocks on and above the diagonal are
    multiplied (GRAM_BLOCK columns wide, one product per block row) and the others mirrored: PyTorch has no
    symmetric rank-k update (BLAS syrk), and this does about half the multiplications of one product, 20-40 %
    faster for 256 to 384 columns. A GPU is faster with one product than with many small ones."""
    C = rows.shape[1]
    if out is None:
        out = rows.new_empty((C, C))
    if C < 2 * GRAM_BLOCK or rows.device.type in ("cuda", "mps"):
        return torch.mm(rows.T, rows, out=out)
    for a in range(0, C, GRAM_BLOCK):
        torch.mm(rows[:, a:a + GRAM_BLOCK].T, rows[:, a:], out=out[a:a + GRAM_BLOCK, a:])
    for a in range(GRAM_BLOCK, C, GRAM_BLOCK):
        out[a:, a - GRAM_BLOCK:a] = out[a - GRAM_BLOCK:a, a:].T
    return out


def _conv_input_gram(padded: torch.Tensor, mask: torch.Tensor, k: int, d: int, finite: bool) -> torch.Tensor:
    """Σ over real output frames of p pᵀ, p the patch of a stride-1 Conv1d, without the patches, as the
    k (k + 1) / 2 blocks of its tap pairs on and above the diagonal (C, C each, see :func:`tap_pairs`): block
    (j, j') is the sum of p_j p_j'ᵀ, p_j the patch's tap j. :func:`tap_blocks_to_matrix` arranges them.

    With x_u the padded input at frame u and w_j(u) = mask[u - j d] (0 outside the mask), block (j, j + δ) is
    Σ_u w_j(u) x_u x_{u + δ d}ᵀ. For j = 0 this is the lag-δ Gram matrix H_δ of the input, one matrix product
    per lag over the frames of all utterances at once (a real frame u plus δ d stays inside its utterance's
    padded frames, so no term mixes utterances); the other blocks differ from H_δ only where w_j and w_0
    differ, the first and last j d frames of each stretch of real frames, which are added as small
    corrections. k products of (C x frames) instead of k² of the patches, each written into place. Frames
    outside every real patch only ever meet a zero weight; without ``finite`` (see :func:`_gram`) they are
    zeroed first, with it an inf or nan there reaches the diagonal of block (0, 0), where the caller looks.
    """
    B, C, length = padded.shape
    n = B * length
    time_major = padded.permute(2, 0, 1).is_contiguous()  # see _pad_conv_input: frame u of utterance b is row
    step = B if time_major else 1                          # u B + b, else b T_padded + u; one frame later is +step

    def frames(t: torch.Tensor) -> torch.Tensor:  # (B, T_padded) in the order of the rows
        return (t.T if time_major else t).reshape(-1)

    rows = (padded.permute(2, 0, 1) if time_major else padded.transpose(1, 2)).reshape(n, C)  # a view
    rows = rows.to(_stat_dtype(padded))
    taps = [frames(F.pad(mask, (j * d, (k - 1 - j) * d))) for j in range(k)]  # w_j over the rows
    if finite:
        # every product below pairs a frame with one of weight w_j, so a frame outside every real patch meets
        # a zero weight only; an inf or nan there still reaches block (0, 0) through `weighted`
        x = rows
    else:
        x = torch.where(torch.stack(taps).any(0)[:, None], rows, rows.new_zeros(()))
    weighted = x * taps[0][:, None]
    # the frames where some w_j differs from w_0 (a sync on a GPU, one per call: how many is data)
    edges = torch.stack(taps[1:]).ne(taps[0]).any(0).nonzero().squeeze(1) if k > 1 else None
    pairs = tap_pairs(k)
    blocks = x.new_empty((len(pairs), C, C))
    for lag in range(k):
        shift = lag * d * step
        first = blocks[pairs.index((0, lag))]
        if lag == 0:
            _symmetric_product(weighted, out=first)
        else:
            torch.mm(weighted[:n - shift].T, x[shift:], out=first)
        for j in range(1, k - lag):
            sign = taps[j][edges].to(x.dtype) - taps[0][edges].to(x.dtype)
            # an edge frame of another tap may lie within `shift` of the end: its sign is 0 here, and the clamp
            # only keeps the index valid
            torch.addmm(first, (x[edges] * sign[:, None]).T, x[(edges + shift).clamp_max(n - 1)],
                        out=blocks[pairs.index((j, j + lag))])
    return blocks


def tap_pairs(k: int) -> list[tuple[int, int]]:
    """The tap pairs (j, j') of a kernel of size k with j <= j', in the order of :func:`_conv_input_gram`."""
    return [(j, j2) for j in range(k) for j2 in range(j, k)]


def tap_blocks_to_matrix(blocks: torch.Tensor) -> torch.Tensor:
    """The blocks of tap pairs of a Conv1d's input Gram matrix (:func:`_conv_input_gram`) as the matrix of its
    channel-major inputs, (C k, C k): entry (c k + j, c' k + j') is entry (c, c') of block (j, j'), the
    transpose of block (j', j) for j > j'. The copy interleaves every entry, which is slow: a sum of many
    batches is arranged once, rather than every batch's."""
    C = blocks.shape[-1]
    k = round(((8 * blocks.shape[0] + 1) ** 0.5 - 1) / 2)
    full = blocks.new_empty((C, k, C, k))
    for (j, j2), block in zip(tap_pairs(k), blocks):
        full[:, j, :, j2] = block
        full[:, j2, :, j] = block.T
    return full.view(C * k, C * k)


@dataclass
class LayerCall:
    """One forward call of a linear map: ``mask`` (B, T) True on real positions, ``grads`` (B, T, out) the
    gradient w.r.t. the output, set in the backward pass (None if no gradient reached the layer), and its
    inputs, :attr:`inputs` (B, T, in).

    ``source`` is what the map was applied to: its inputs, or for a Conv1d (``kernel`` = its size, stride and
    dilation) the padded input (B, C_in, T_padded), whose patches are the inputs. The statistics are read
    through the methods, which take the convolution's structure into account."""

    source: torch.Tensor
    mask: torch.Tensor
    grads: torch.Tensor | None = None
    kernel: tuple[int, int, int] | None = None

    @property
    def inputs(self) -> torch.Tensor:
        """(B, T, in); for a Conv1d its patches, made on each call."""
        return self.source if self.kernel is None else _unfold(self.source, *self.kernel)

    def input_gram(self, finite: bool = False, blocks: bool = False) -> torch.Tensor:
        """Σ over real positions of x xᵀ (in, in). ``finite``: the caller knows, or checks afterwards, that the
        padding holds finite numbers only, and the padding is zeroed faster (any inf or nan there would show
        on the result's diagonal). ``blocks``: a stride-1 Conv1d's as the blocks of its tap pairs (see
        :func:`tap_blocks_to_matrix`), for a caller that adds up many before arranging them."""
        if self.kernel is not None and self.kernel[1] == 1:
            gram = _conv_input_gram(self.source, self.mask, self.kernel[0], self.kernel[2], finite)
            return gram if blocks else tap_blocks_to_matrix(gram)
        return _gram(self.inputs, self.mask, finite)

    def grad_gram(self, finite: bool = False) -> torch.Tensor | None:
        """Σ over real positions of g gᵀ (out, out), ``finite`` as for :meth:`input_gram`; None without
        gradients."""
        return None if self.grads is None else _gram(self.grads, self.mask, finite)

    def weight_grads(self) -> torch.Tensor | None:
        """The per-utterance weight gradients (B, out, in), Σ over real positions of g xᵀ; None without
        gradients. A Conv1d's are k products with the input's views shifted by each tap of its kernel."""
        if self.grads is None:
            return None
        dtype = _stat_dtype(self.grads, self.source)
        g = self.grads.to(dtype).masked_fill(~self.mask[..., None], 0)
        if self.kernel is None:
            return torch.einsum("bto,bti->boi", g, self.source.to(dtype))
        k, s, d = self.kernel
        x, T = self.source.to(dtype), g.shape[1]
        g = g.transpose(1, 2)  # (B, out, T)
        taps = [g @ x[:, :, j * d: j * d + s * (T - 1) + 1: s].transpose(1, 2) for j in range(k)]  # (B, out, C) each
        return torch.stack(taps, -1).flatten(2)  # channel-major: column c k + j


@dataclass
class LinearMapRecorder:
    """What the hooks collect. Set :attr:`masks` before each forward pass; read :attr:`calls` after the
    backward pass; :meth:`clear` between batches."""

    maps: dict[str, LinearMap]
    masks: tuple[torch.Tensor, ...] = ()
    calls: dict[str, list[LayerCall]] = field(default_factory=dict)
    #: the gradients the calls need, (where in the graph, what to do with the gradient there): see :meth:`need`
    needed: list[tuple[GradientEdge, Callable[[torch.Tensor], None]]] = field(default_factory=list)
    _axis: dict[str, int] = field(default_factory=dict)  # layer -> index of its mask in `masks`
    _time_first: dict[str, bool] = field(default_factory=dict)  # Linear layers with 3-D inputs

    def __post_init__(self):
        self.clear()

    def clear(self) -> None:
        self.calls = {name: [] for name in self.maps}
        self.needed = []

    def need(self, edge: GradientEdge, store: Callable[[torch.Tensor], None]) -> None:
        """Note that the gradient at ``edge`` (a layer output's) goes to ``store``. A plain ``backward()``
        delivers it through hooks; :func:`layer_gradients` asks autograd for exactly these gradients, and no
        weight gradient is computed."""
        self.needed.append((edge, store))

    @property
    def batch_size(self) -> int | None:
        return int(self.masks[0].shape[0]) if self.masks else None

    def positions(self, name: str, batch: int, time: int, device: torch.device) -> torch.Tensor:
        """The (batch, time) mask of real positions of layer ``name`` (on ``device``, that of its inputs, when
        every position is real)."""
        if time == 1 or not self.masks:
            return torch.ones(batch, time, dtype=torch.bool, device=device)
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

    def add(self, name: str, source: torch.Tensor, mask: torch.Tensor,
            kernel: tuple[int, int, int] | None = None) -> LayerCall:
        call = LayerCall(source.detach(), mask, kernel=kernel)
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
        call = recorder.add(name, _to_btc(x, B, T, time_first), recorder.positions(name, B, T, x.device))
        if output.requires_grad:
            def store(g):
                call.grads = _to_btc(g, B, T, time_first).detach()
            output.register_hook(store)
            recorder.need(get_gradient_edge(output), store)
    return hook


def _conv1d_hook(recorder: LinearMapRecorder, name: str):
    def hook(module, args, output):
        x = args[0]
        if x.dim() == 2:  # unbatched (C, T)
            x, output_btc = x.unsqueeze(0), (lambda g: g.unsqueeze(0).transpose(1, 2))
        else:
            output_btc = (lambda g: g.transpose(1, 2))
        B, T = x.shape[0], output.shape[-1]
        kernel = (module.kernel_size[0], module.stride[0], module.dilation[0])
        call = recorder.add(name, _pad_conv_input(x.detach(), module), recorder.positions(name, B, T, x.device),
                            kernel)
        if output.requires_grad:
            def store(g):
                call.grads = output_btc(g).detach()
            output.register_hook(store)
            recorder.need(get_gradient_edge(output), store)
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
        L, N, E = x.shape
        mask = recorder.positions(name, N, L, x.device)
        attn_out = output[0]
        nodes = _projection_nodes(mha, attn_out) if attn_out.requires_grad else None
        if nodes is not None:
            context = getattr(nodes["out"], _MATMUL_INPUTS[type(nodes["out"]).__name__]).detach()  # (L N, E)
            in_call = recorder.add(in_name, x.transpose(0, 1), mask)
            out_call = recorder.add(out_name, context.view(L, N, E).transpose(0, 1), mask)
            for node, call, width in ((nodes["in"], in_call, 3 * E), (nodes["out"], out_call, E)):
                store = _store_product_grads(call, L, N, width)
                node.register_prehook(lambda grad_outputs, store=store: store(grad_outputs[0]))
                recorder.need(GradientEdge(node, 0), store)
        else:
            _rerun_attention(recorder, name, mha, x, a, output, mask, batched)

    return hook


#: The autograd nodes of F.linear's matrix product on 2-D inputs (with and without bias), and the attribute
#: holding the input they saved for the backward pass.
_MATMUL_INPUTS = {"AddmmBackward0": "_saved_mat1", "MmBackward0": "_saved_self"}
#: How many autograd nodes are searched for the two projections; one attention call has a few dozen.
_GRAPH_SEARCH = 256


def _projection_nodes(mha: nn.MultiheadAttention, output: torch.Tensor) -> dict | None:
    """The autograd nodes of the in- and out-projection matrix products of one attention call, searched
    backwards from its output and recognised by the weight they multiply: ``{"in": node, "out": node}``, or
    None when the graph does not show both."""
    roles = {id(mha.in_proj_weight): "in", id(mha.out_proj.weight): "out"}
    found, seen, queue = {}, set(), deque([output.grad_fn])
    while queue and len(found) < 2 and len(seen) < _GRAPH_SEARCH:
        node = queue.popleft()
        if node is None or node in seen:
            continue
        seen.add(node)
        role = None
        if type(node).__name__ in _MATMUL_INPUTS:
            weight = _multiplied_leaf(node)
            role = roles.get(id(weight)) if weight is not None else None
        if role is not None:
            found[role] = node
        if role != "in":  # beyond the in-projection lies the rest of the model
            queue.extend(fn for fn, _ in node.next_functions)
    return found if len(found) == 2 else None


def _multiplied_leaf(node) -> torch.Tensor | None:
    """The leaf tensor the second factor of a matrix product node comes from through single-input nodes (the
    weight's transpose, an autocast copy), or None."""
    fn = node.next_functions[-1][0]
    for _ in range(3):
        if fn is None:
            return None
        if hasattr(fn, "variable"):  # AccumulateGrad: a leaf that requires grad
            return fn.variable
        if len(fn.next_functions) != 1:
            return None
        fn = fn.next_functions[0][0]
    return None


def _store_product_grads(call: LayerCall, L: int, N: int, width: int):
    """The gradient (L N, width) w.r.t. a projection's matrix product is the layer's output gradient."""
    def store(g):
        if g is not None:
            call.grads = g.detach().view(L, N, width).transpose(0, 1)
    return store


def _rerun_attention(recorder: LinearMapRecorder, name: str, mha: nn.MultiheadAttention, x: torch.Tensor,
                     a: dict, output, mask: torch.Tensor, batched: bool) -> None:
    """Record both projections of an attention call by re-running its core (where the autograd graph does not
    show them): the context from the input, the q/k/v gradients by a vector-Jacobian product of the re-run,
    which sees the gradient w.r.t. the context only (refused when the attention weights feed the loss too)."""
    padding = a["key_padding_mask"]
    if padding is not None and not batched:
        padding = padding.unsqueeze(0)
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
    in_call = recorder.add(_join(name, "in_proj"), x.transpose(0, 1), mask)
    out_call = recorder.add(_join(name, "out_proj"), context.detach().transpose(0, 1), mask)
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
        recorder.need(get_gradient_edge(attn_out), lambda g: None)  # the hook fires when the gradient is taken
    weights = output[1]
    if weights is not None and weights.requires_grad:
        def refuse(g):
            if g.abs().sum() > 0:
                raise UnsupportedLayerError(f"{name!r}: the attention weights feed the loss; the in-projection "
                                            "gradients of the re-run would be incomplete")
        weights.register_hook(refuse)


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


def layer_gradients(loss: torch.Tensor, recorder: LinearMapRecorder) -> None:
    """The backward pass of ``loss`` for the recorded calls: the gradients w.r.t. the layers' outputs, and
    nothing else. Autograd runs only the part of the graph between the loss and the lowest recorded output,
    without the weight gradients (a convolution's and a matrix product's, as costly as the gradient w.r.t.
    its input) that a ``backward()`` would add: K-FAC, EK-FAC and the diagonal need the output gradients only,
    and make per-utterance weight gradients from them themselves."""
    if not recorder.needed:
        raise ValueError("the loss does not depend on any target layer")
    edges, stores = zip(*recorder.needed)
    for g, store in zip(torch.autograd.grad(loss, list(edges), allow_unused=True), stores):
        if g is not None:
            store(g)


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
