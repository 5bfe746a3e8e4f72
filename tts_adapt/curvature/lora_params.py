"""LaLoRA's curvature: the Fisher of the pretraining loss w.r.t. the LoRA factors A and B themselves.

For a linear map y = (W + s B A) x with LoRA factors B (out, r), A (r, in) and s = alpha / r, and g the
gradient of the loss w.r.t. y at one position, the gradients w.r.t. the factors are

    ∇B = s · g (A x)ᵀ            (B is a linear map with input A x and output gradient s g)
    ∇A = s · (Bᵀ g) xᵀ           (A is a linear map with input x and output gradient s Bᵀ g)

so every statistic of the factors follows exactly from the inputs x and output gradients g of the merged
map W* = W + s B* A* at the fit's point (A*, B*):

* K-FAC, per factor an input-side and an output-side matrix (the normalisation of :mod:`tts_adapt.curvature.fit`):
  lora_A: A_A = A_f (in, in), G_A = s² B*ᵀ G_f B* (r, r);  lora_B: A_B = A* A_f A*ᵀ (r, r), G_B = s² G_f (out, out),
  with A_f, G_f the K-FAC factors of the merged map. These are the K-FAC factors that hooks on the LoRA
  sub-modules would record, without running them: the fit is :func:`~tts_adapt.curvature.fit.fit_curvature`'s
  K-FAC of the merged maps (streaming, resumable, data-parallel), then the products above.
* diagonal: per utterance ∇W_n = Σ_t g_nt x_ntᵀ, ∇A_n = s B*ᵀ ∇W_n and ∇B_n = s ∇W_n A*ᵀ, and
  diag_A = (1/N) Σ_n (∇A_n)², diag_B = (1/N) Σ_n (∇B_n)² (one pass, resumable, data-parallel, below).

Treating the factors as maps of the merged layer also covers what peft never calls as modules (the LoRA of an
attention module's in- and out-projection, whose update peft adds to the weights).

At peft's initialisation B* = 0, so G_A = 0 and diag_A = 0: a Fisher taken there constrains only B. The point
(A*, B*) is therefore a choice of the caller (:class:`LoraPointMaker`: peft's initialisation, or LoRA
warm-started on pretraining data), recorded in the file with the LoRA setup, and stored as each factor's
``mean``: the Laplace approximation's mean, where the adaptation starts. The adaptation's penalty,
its handling of A and the choice of point are in :mod:`tts_adapt.adapt.strategies.lalora`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from tts_adapt.curvature.curvature_config import LORA_METHODS, CurvatureMethod, FisherType
from tts_adapt.curvature.fit import (
    UTTERANCES,
    FitState,
    _fitting,
    _loss_function,
    batch_plan,
    data_fingerprint,
    fit_curvature,
    fit_targets,
    record_planned_batch,
)
from tts_adapt.curvature.hooks import LinearMap, record_linear_maps, weight_of
from tts_adapt.curvature.storage import Curvature, CurvatureLayer
from tts_adapt.distributed import all_reduce_sums, dist_info
from tts_adapt.models.trainer import Collator, batch_stream

log = logging.getLogger(__name__)
POINT = "lalora.point/"  # prefix of the LoRA point's tensors among a fit state's results


@dataclass
class LoraPoint:
    """The LoRA factors a LaLoRA curvature is fitted at: map name -> (A (r, in), B (out, r)), and s = alpha / r."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values()))[0].shape[0]


class LoraPointMaker(Protocol):
    """Makes the point of a LaLoRA fit from the backend, the fit's utterances and the target layers (e.g. peft's
    initialisation, or LoRA trained on those utterances for a few steps); ``setup`` (JSON-able: rank, alpha,
    seed, init, ...) is recorded in the curvature file, where an adaptation compares it with its own."""

    setup: dict

    def __call__(self, backend, features: Sequence, targets: list[str]) -> LoraPoint: ...


# --------------------------------------------------------------------------- the merged model
@contextlib.contextmanager
def at_lora_point(model: torch.nn.Module, maps: list[LinearMap], point: LoraPoint):
    """``model`` with each map's weight W replaced by W + s B* A* (in place) while the context is open; the
    original weights are put back afterwards, also on an error. A zero B* leaves the weight untouched."""
    saved = []
    try:
        with torch.no_grad():
            for m in maps:
                A, B = point.factors[m.name]
                if not torch.any(B != 0):
                    continue
                w = weight_of(model, m)
                if not isinstance(w, torch.nn.Parameter):
                    raise TypeError(f"{m.name}: its weight is computed from other parameters (e.g. weight norm); "
                                     "a LaLoRA point cannot be added to it")
                saved.append((w, w.detach().clone()))
                w.add_((point.scale * B.to(w) @ A.to(w)).reshape(w.shape))
        yield model
    finally:
        with torch.no_grad():
            for w, original in saved:
                w.copy_(original)


def _check_point(point: LoraPoint, maps: list[LinearMap]) -> None:
    for m in maps:
        if m.name not in point.factors:
            raise ValueError(f"the LoRA point has no factors for layer {m.name!r}")
        A, B = point.factors[m.name]
        r = A.shape[0]
        if tuple(A.shape) != (r, m.in_features) or tuple(B.shape) != (m.out_features, r):
            raise ValueError(f"{m.name}: LoRA factors A {tuple(A.shape)} and B {tuple(B.shape)} do not fit the "
                             f"layer's (out, in) = {m.shape} at rank {r}")


def _point_to_state(state: FitState, point: LoraPoint) -> None:
    for name, (A, B) in point.factors.items():
        state.results[f"{POINT}{name}.A"], state.results[f"{POINT}{name}.B"] = A.detach().clone(), B.detach().clone()
    state.results[f"{POINT}scale"] = torch.tensor(float(point.scale))


def _point_from_state(state: FitState, maps: list[LinearMap]) -> LoraPoint | None:
    if f"{POINT}scale" not in state.results:
        return None
    r = state.results
    return LoraPoint({m.name: (r[f"{POINT}{m.name}.A"].float(), r[f"{POINT}{m.name}.B"].float()) for m in maps},
                     float(r[f"{POINT}scale"]))


# --------------------------------------------------------------------------- the fit
def fit_lora_curvature(backend, features: Sequence, lora_point: LoraPointMaker, method: str = "lalora-kfac",
                       fisher: str = "empirical", targets: Sequence[str] | None = None, batch_size: int = 8,
                       progress: bool = True, state: FitState | None = None, seed: int = 0,
                       max_batches: int | None = None, workers: int = 0) -> Curvature | None:
    """Fit the Fisher w.r.t. the LoRA factors of ``targets`` (default ``backend.lora_targets()``) at the point
    ``lora_point`` makes, on ``features``; the arguments and the resumable ``state`` are those of
    :func:`~tts_adapt.curvature.fit.fit_curvature` (the point is made once and kept in the state). Returns the
    curvature (``lalora-kfac`` or ``lalora-diag``, on the CPU), or None while the fit is unfinished."""
    if method not in LORA_METHODS:
        raise ValueError(f"unknown LaLoRA curvature method {method!r}; valid: {', '.join(LORA_METHODS)}")
    targets, maps = fit_targets(backend, features, targets)
    base_fingerprint = backend.fingerprint(targets)  # of the base model, before the point is added
    state = FitState() if state is None else state
    point = _point_from_state(state, maps)
    if point is None:
        point = lora_point(backend, features, targets)
        _check_point(point, maps)
        _point_to_state(state, point)
    _check_point(point, maps)
    with at_lora_point(backend.model, maps, point):
        if method == CurvatureMethod.LALORA_KFAC.value:
            inner = fit_curvature(backend, features, method="kfac", fisher=fisher, targets=targets,
                                  batch_size=batch_size, progress=progress, state=state, seed=seed,
                                  max_batches=max_batches, workers=workers)
            if inner is None:
                return None
            tensors, n, info = _kfac_factors(inner, maps, point), inner.num_utterances, dict(inner.info)
            positions = {layer.name: layer.positions for layer in inner.layers}
        else:
            done = _fit_diag(backend, features, maps, point, fisher, batch_size, progress, state, seed, max_batches,
                             workers)
            if not done:
                return None
            r = state.results
            n = int(r[UTTERANCES])
            positions = {m.name: int(r[f"{m.name}.positions"]) for m in maps}
            tensors = {k: v.to(device="cpu", dtype=torch.float32) for k, v in r.items()
                       if k.endswith(".diag") and not k.startswith(POINT)}
            info = {"batch_size": batch_size, "seed": seed, "processes": dist_info()[1],
                    "data": data_fingerprint(features), "mc_samples": 1 if fisher == FisherType.MC.value else 0}
    layers = []
    for m in maps:
        A, B = point.factors[m.name]
        r = A.shape[0]
        layers += [CurvatureLayer(f"{m.name}.lora_A", m.module, m.param, "lora_A", r, m.in_features, positions[m.name]),
                   CurvatureLayer(f"{m.name}.lora_B", m.module, m.param, "lora_B", m.out_features, r,
                                  positions[m.name])]
        tensors[f"{m.name}.lora_A.mean"], tensors[f"{m.name}.lora_B.mean"] = A.float().cpu(), B.float().cpu()
    info["lora"] = {**lora_point.setup, "targets": targets, "scale": point.scale, "rank": point.rank}
    audio = backend.audio.to_dict() if hasattr(backend, "audio") and hasattr(backend.audio, "to_dict") else {}
    curvature = Curvature(method=method, fisher=fisher, layers=layers, tensors=tensors, num_utterances=n,
                          fingerprint=base_fingerprint, targets=targets, backend=getattr(backend, "name", ""),
                          audio=audio, info=info)
    log.info("fitted %s curvature (%s Fisher) of the LoRA factors of %d layers on %d utterances", method, fisher,
             len(maps), n)
    return curvature


def _kfac_factors(inner: Curvature, maps: list[LinearMap], point: LoraPoint) -> dict[str, torch.Tensor]:
    """The K-FAC factors of each map's LoRA factors from the merged map's (A_f, G_f); see the module doc."""
    out = {}
    s2 = point.scale ** 2
    for m in maps:
        f = inner.factors(m.name)
        A_f, G_f = f["A"].double(), f["G"].double()
        A, B = (t.double().cpu() for t in point.factors[m.name])
        out[f"{m.name}.lora_A.A"], out[f"{m.name}.lora_A.G"] = A_f, s2 * B.T @ G_f @ B
        out[f"{m.name}.lora_B.A"], out[f"{m.name}.lora_B.G"] = A @ A_f @ A.T, s2 * G_f
    return {k: ((v + v.T) / 2).float() for k, v in out.items()}


def _fit_diag(backend, features, maps: list[LinearMap], point: LoraPoint, fisher: str, batch_size: int,
              progress: bool, state: FitState, seed: int, max_batches: int | None, workers: int) -> bool:
    """One pass of the diagonal Fisher of the factors into ``state`` (sums in float64, then normalised into
    ``state.results``); whether it is finished. The state's key is compared as fit_curvature compares it."""
    fisher_type = FisherType(fisher)
    targets = list(dict.fromkeys(m.module for m in maps))
    rank, world = dist_info()
    plan = batch_plan(features, batch_size)
    key = {"method": CurvatureMethod.LALORA_DIAG.value, "fisher": fisher_type.value, "targets": targets,
           "batch_size": batch_size, "seed": seed, "model": backend.fingerprint(targets),
           "data": data_fingerprint(features), "rank": rank, "world": world}
    if not state.key:
        state.key = key
    elif state.key != key:
        changed = ", ".join(k for k, v in key.items() if state.key.get(k) != v)
        raise ValueError(f"the fit state belongs to another fit (changed: {changed}); start a new state or pass the "
                         "same arguments")
    if state.phase >= 1:
        return True
    device = backend.device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    weights = list({id(p): p for t in targets for p in backend.model.get_submodule(t).parameters()}.values())
    factors = {m.name: tuple(t.to(device=device, dtype=torch.float32) for t in point.factors[m.name]) for m in maps}
    sums = {k: v.to(device=device, dtype=dtype) for k, v in state.sums.items()}
    if not sums:
        sums[UTTERANCES] = torch.zeros((), dtype=dtype, device=device)
        for m in maps:
            r = factors[m.name][0].shape[0]
            sums[f"{m.name}.positions"] = torch.zeros((), dtype=dtype, device=device)
            sums[f"{m.name}.lora_A.diag"] = torch.zeros((r, m.in_features), dtype=dtype, device=device)
            sums[f"{m.name}.lora_B.diag"] = torch.zeros((m.out_features, r), dtype=dtype, device=device)
    loss_fn = _loss_function(backend, fisher_type)
    start = state.batches_seen
    stop = len(plan) if max_batches is None else min(len(plan), start + max_batches)
    mine = [plan[i] for i in range(start, stop) if i % world == rank]
    batches = batch_stream(Collator(backend, features), mine, workers=workers, pin_memory=device.type == "cuda")
    bar = tqdm(total=len(plan), initial=start, desc="fitting lalora-diag curvature", unit="batch",
               disable=not progress or rank > 0, leave=max_batches is None)
    with _fitting(backend.model, weights), record_linear_maps(backend.model, targets) as recorder:
        for i in range(start, stop):
            if i % world == rank:
                batch, calls = record_planned_batch(backend, features, plan, i, batches, recorder, loss_fn, seed)
                if calls is not None:
                    sums[UTTERANCES] += len(batch)
                    for m in maps:
                        _add_diag(sums, m, calls[m.name], factors[m.name], point.scale)
            bar.update(1)
    bar.close()
    state.sums, state.batches_seen = sums, stop
    if stop < len(plan):
        return False
    all_reduce_sums(sums)
    n = sums[UTTERANCES].clamp_min(1.0)
    state.results[UTTERANCES] = sums[UTTERANCES].clone()
    for m in maps:
        state.results[f"{m.name}.positions"] = sums[f"{m.name}.positions"]
        for factor in ("lora_A", "lora_B"):
            state.results[f"{m.name}.{factor}.diag"] = sums[f"{m.name}.{factor}.diag"] / n
    state.phase, state.batches_seen, state.sums = 1, 0, {}
    return True


def _add_diag(sums: dict, m: LinearMap, calls, factors: tuple[torch.Tensor, torch.Tensor], scale: float) -> None:
    """Add one batch's squared per-utterance gradients of the map's LoRA factors (a call without gradients
    counts as zero gradients)."""
    per_utterance = None
    for c in calls:
        sums[f"{m.name}.positions"] += c.mask.sum()
        grads = c.weight_grads()  # (B, out, in)
        if grads is not None:
            per_utterance = grads if per_utterance is None else per_utterance + grads
    if per_utterance is None:
        return
    A, B = (t.to(per_utterance.dtype) for t in factors)
    grad_A = scale * torch.einsum("or,boi->bri", B, per_utterance)  # s B*ᵀ ∇W_n, (B, r, in)
    grad_B = scale * torch.einsum("boi,ri->bor", per_utterance, A)  # s ∇W_n A*ᵀ, (B, out, r)
    sums[f"{m.name}.lora_A.diag"] += (grad_A ** 2).sum(0).to(sums[f"{m.name}.lora_A.diag"].dtype)
    sums[f"{m.name}.lora_B.diag"] += (grad_B ** 2).sum(0).to(sums[f"{m.name}.lora_B.diag"].dtype)


def lora_setup_of(curvature: Curvature) -> dict:
    """The LoRA setup a LaLoRA curvature was fitted for (rank, alpha, seed, targets, init, ...)."""
    if curvature.method not in LORA_METHODS:
        raise ValueError(f"a {curvature.method} curvature is not a LaLoRA curvature (lalora-kfac or lalora-diag)")
    return dict(curvature.info.get("lora", {}))
