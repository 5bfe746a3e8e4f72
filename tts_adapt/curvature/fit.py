"""Fitting the curvature of the target layers on pretraining data: K-FAC, EK-FAC or diagonal Fisher.

The fit streams over the utterances in batches (memory does not grow with their number),
records inputs and output gradients of every target layer (:mod:`tts_adapt.curvature.hooks`)
and adds their statistics to running sums.

Normalisation. For one layer with weight W (out x in), N utterances and P real positions
(frames or tokens) of that layer, x the layer input and g the gradient w.r.t. the layer output
at one position, and the per-utterance gradient ∇W_n = Σ_t g_nt x_ntᵀ:

* A = (1/P) Σ_{n,t} x xᵀ                  (in x in; mean over positions)
* G = (1/N) Σ_{n,t} g gᵀ                  (out x out; summed over positions, mean over utterances)
* diag = (1/N) Σ_n (∇W_n)²                (out x in, elementwise square)
* S = (1/N) Σ_n (Q_Gᵀ ∇W_n Q_A)²          (out x in; Q_A, Q_G the eigenvectors of A and G)

The gradients are those of the sum over the batch's utterances of their losses, taken as
B · ``backend.loss(batch)`` (B utterances in the batch). coqui's losses are means over the
batch's frames (tokens), so this is exactly Σ_n L_n for utterances of equal length and otherwise
weighs each utterance by its share of the batch's frames; batches are made of utterances of
similar length (sorted by length) to keep that close.

All three approximate one matrix, the per-utterance Fisher F = (1/N) Σ_n vec(∇W_n) vec(∇W_n)ᵀ
(vec stacks columns): ``diag`` is its diagonal, ``S`` its diagonal in the K-FAC eigenbasis, and
A ⊗ G its K-FAC ("expand") approximation, which drops the correlations between the positions of
an utterance: F ≈ (1/N) Σ_n Σ_t (x xᵀ) ⊗ (g gᵀ) ≈ A ⊗ G, and
vec(ΔW)ᵀ (A ⊗ G) vec(ΔW) = tr(ΔWᵀ G ΔW A). The Laplace precision of the N pretraining
utterances is N · F: a penalty (λ/2) vec(ΔW)ᵀ F vec(ΔW) with λ = N is the Laplace posterior of
the fit data, whatever the method. Biases are not part of the statistics.

Fisher types:

* ``empirical``: gradients of the model's training loss on the real targets (all its terms).
* ``mc``: targets sampled from the model's predictive distribution. The regression outputs of a
  FastPitch-style (coqui ``ForwardTTS``) model, i.e. the mel spectrogram and also the log
  durations and average pitch (and energy, when the model has it) — without those the duration
  and pitch predictors would get no curvature — are treated as Gaussians with unit variance in the
  model's normalised space: target = prediction + ε, ε ~ N(0, 1). The loss is the training loss's
  form for those terms, B · Σ_term α_term · masked mean (prediction − target)², with the model
  config's weights α (``spec_loss_alpha``, ``dur_loss_alpha``, ``pitch_loss_alpha``), so that both
  Fisher types share one scale (they agree where the model's residuals have unit variance). The
  alignment terms have no target distribution; in FastPitch they only reach the aligner and the
  token embedding, never a target layer. One sample per utterance, drawn from a generator seeded
  by (seed, batch index), so a resumed or data-parallel fit, and both passes of EK-FAC, draw the
  same samples.

The model is put in eval mode (no dropout) for the fit and restored afterwards.

Devices and precision. The fit runs where the model is (``device``; the backend is moved there
first). Batches are collated on the CPU, by ``workers`` DataLoader processes if asked (in
page-locked memory for a GPU), and moved to the device, where the statistics are computed and
summed: every tensor of the fit follows the model's. A batch's statistics are computed in float32
(float64 for a float64 model) from float32 casts of the layers' inputs and gradients, also when the
forward ran under autocast, because half precision would round away much of a sum over thousands
of positions. They are summed over up to ``FOLD_BATCHES`` batches in float32 (the partial sums),
which are then added to the running sums in float64 (float32 on Apple's mps, which has no
float64): no matrix product runs in float64 (many times slower on a GPU), the error of a sum over
many batches does not grow with their number beyond the partial sums' few float32 roundings (about
1e-6 relative), and the float64 additions, whose memory traffic would cost several percent of a fit
on a CPU if made at every batch, come once per ``FOLD_BATCHES`` batches. EK-FAC's eigendecompositions
run on the device too. The fitted :class:`Curvature` is on the CPU, and so is every file (the
curvature, :meth:`FitState.save`): a fit state saved on one device continues on another.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tts_adapt.curvature.curvature_config import LORA_METHODS, CurvatureMethod, FisherType
from tts_adapt.curvature.hooks import (
    LayerCall,
    LinearMap,
    LinearMapRecorder,
    PositionMaskError,
    layer_gradients,
    linear_maps,
    record_linear_maps,
    tap_blocks_to_matrix,
)
from tts_adapt.curvature.storage import TENSORS, Curvature, CurvatureLayer
from tts_adapt.distributed import all_reduce_sums, dist_info, group_device
from tts_adapt.io import atomic_path
from tts_adapt.models.trainer import Collator, batch_stream

log = logging.getLogger(__name__)


#: The passes over the data of each method. EK-FAC needs the K-FAC eigenbasis before its scalings.
PHASES = {CurvatureMethod.KFAC: ("factors",), CurvatureMethod.EKFAC: ("factors", "scalings"),
          CurvatureMethod.DIAG: ("diag",)}
UTTERANCES = "#utterances"  # the key of the utterance count among the sums (never a "<layer>.<kind>" key)
#: Batches whose statistics are summed in float32 before they are added to the float64 running sums.
FOLD_BATCHES = 16
STATE_META_KEY = "tts_adapt.curvature_state"


def _option(enum_cls, value, what: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(e.value for e in enum_cls)}") from None


# --------------------------------------------------------------------------- resumable state
@dataclass
class FitState:
    """Progress of a fit, to continue it in a later call (also after :meth:`save` / :meth:`load`).

    ``key`` says which fit it belongs to (method, Fisher type, targets, batch size, seed, model and
    data fingerprints, process rank and count; a new ``FitState()`` takes it from the first call
    it is passed to); ``phase`` indexes the passes of the method,
    ``batches_seen`` counts the batches of the current pass done by the whole process group and added
    to ``sums``, this process's float64 running sums of the pass; ``results`` are the finished passes
    (normalised and summed over processes). Under torchrun every process keeps its own state. During a
    fit its tensors are on the fit's device; :meth:`save` writes them from the CPU.
    """

    key: dict = field(default_factory=dict)
    phase: int = 0
    batches_seen: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    results: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return bool(self.key) and self.phase >= len(PHASES[CurvatureMethod(self.key["method"])])

    def save(self, path: str | Path) -> None:
        import json

        from safetensors.torch import save_file

        tensors = {**{f"sums/{k}": v.detach().cpu().contiguous() for k, v in self.sums.items()},
                   **{f"results/{k}": v.detach().cpu().contiguous() for k, v in self.results.items()}}
        meta = {"key": self.key, "phase": self.phase, "batches_seen": self.batches_seen}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={STATE_META_KEY: json.dumps(meta, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path) -> "FitState":
        import json

        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta_text = (fh.metadata() or {}).get(STATE_META_KEY)
            if meta_text is None:
                raise ValueError(f"{path} is not a curvature fit state")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(meta_text)
        return cls(meta["key"], int(meta["phase"]), int(meta["batches_seen"]),
                   {k[len("sums/"):]: v for k, v in tensors.items() if k.startswith("sums/")},
                   {k[len("results/"):]: v for k, v in tensors.items() if k.startswith("results/")})


# --------------------------------------------------------------------------- the fit
def fit_curvature(backend, features: Sequence, method: str = "kfac", fisher: str = "empirical",
                  targets: Sequence[str] | None = None, batch_size: int = 8, progress: bool = True,
                  state: FitState | None = None, seed: int = 0, max_batches: int | None = None,
                  device: str | torch.device | None = None, workers: int = 0) -> Curvature | None:
    """Fit the curvature of ``targets`` (default ``backend.lora_targets()``) on ``features``
    (:class:`~tts_adapt.models.features.UtteranceFeatures`).

    ``method``: ``kfac`` | ``ekfac`` | ``diag``; ``fisher``: ``empirical`` | ``mc`` (see the module
    doc for both and for the normalisation). ``state``: a :class:`FitState` (e.g. a new
    ``FitState()``), updated in place every ``FOLD_BATCHES`` batches and when the call ends; pass it back
    with the same arguments to continue an unfinished or interrupted fit (an interrupted one redoes the
    batches since its last update). ``max_batches`` ends this call after that many
    batches (counted over all processes) and then returns None unless the fit is complete.
    ``seed`` seeds the Monte Carlo samples. Under ``torch.distributed`` every process takes every
    world-th batch and the sums are added over processes at the end of each pass, so the result
    equals a single-process fit. ``device`` (a ``--device`` value): where to fit; the backend is moved
    there and stays (None: where it is). ``workers``: DataLoader processes that collate the next batches
    while this one is fitted (0: each batch in turn in this process). Neither changes the result beyond
    rounding, nor the fit state's key: a fit may continue on another device or with other workers.
    The returned curvature is on the CPU.
    """
    method = _option(CurvatureMethod, method, "curvature method")
    if method.value in LORA_METHODS:
        raise ValueError(f"{method.value} is the curvature of LoRA factors at a LoRA point: fit it with "
                         "tts_adapt.curvature.lora_params.fit_lora_curvature (or fit_curvature_file with a lora_point)")
    fisher = _option(FisherType, fisher, "Fisher type")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    targets, maps = fit_targets(backend, features, targets)
    rank, world = dist_info()
    plan = batch_plan(features, batch_size)
    key = {"method": method.value, "fisher": fisher.value, "targets": targets, "batch_size": batch_size,
           "seed": seed, "model": backend.fingerprint(targets), "data": data_fingerprint(features),
           "rank": rank, "world": world}
    if state is None:
        state = FitState(key)
    elif not state.key:  # a new state: it belongs to this fit from now on
        state.key = key
    elif state.key != key:
        changed = ", ".join(f"{k} {state.key.get(k)!r} -> {v!r}" if k not in ("model", "data") else k
                            for k, v in key.items() if state.key.get(k) != v)
        raise ValueError(f"the fit state belongs to another fit (changed: {changed}); "
                         "start a new state or pass the same arguments")
    if device is not None:
        backend.to(device)
    device = backend.device
    state.sums, state.results = _on_device(state.sums, device), _on_device(state.results, device)
    phases = PHASES[method]
    # the backward pass only has to reach every target layer: differentiate w.r.t. their own parameters
    # (for weight-normalised layers these are the parametrization's, not `weight`)
    weights = list({id(p): p for t in targets for p in backend.model.get_submodule(t).parameters()}.values())
    loss_fn = _loss_function(backend, fisher)
    budget = max_batches
    bar = tqdm(total=len(plan) * len(phases), initial=min(state.phase, len(phases)) * len(plan) + state.batches_seen,
               desc=f"fitting {method.value} curvature", unit="batch", disable=not progress or rank > 0,
               leave=max_batches is None)  # a caller that fits in slices (to save the state) shows one bar
    with _fitting(backend.model, weights), record_linear_maps(backend.model, targets) as recorder:
        while not state.done:
            phase = phases[state.phase]
            start = state.batches_seen
            stop = len(plan) if budget is None else min(len(plan), start + budget)
            # collated on the CPU, ahead of the fit by `workers` processes (page-locked for a GPU)
            mine = [plan[i] for i in range(start, stop) if i % world == rank]
            batches = batch_stream(Collator(backend, features), mine, workers=workers,
                                   pin_memory=device.type == "cuda")
            partial = {}  # the batches since state.batches_seen, summed in float32 (see the module doc)
            for i in range(start, stop):
                if i % world == rank:
                    batch, calls = record_planned_batch(backend, features, plan, i, batches, recorder, loss_fn, seed)
                    if calls is not None:
                        stats = _statistics(phase, maps, calls, len(batch), state.results, finite=True)
                        if phase == "factors" and not _all_finite_diagonals(stats):
                            stats = _statistics(phase, maps, calls, len(batch), state.results, finite=False)
                        _accumulate(partial, stats)
                if (i + 1) % FOLD_BATCHES == 0 or i + 1 == stop:
                    # sums and count change together, so an interrupted call leaves a consistent state
                    state.sums, state.batches_seen, partial = _fold(state.sums, partial, device), i + 1, {}
                bar.update(1)
            if budget is not None:
                budget -= stop - start
            if state.batches_seen < len(plan):
                bar.close()
                return None
            state.sums = _complete(state.sums, maps, phase, device)
            all_reduce_sums(state.sums)
            state.results.update(_finish_phase(phase, method, state.sums, maps, world))
            state.phase, state.batches_seen, state.sums = state.phase + 1, 0, {}
    bar.close()
    curvature = _curvature(backend, method, fisher, maps, targets, state, key, world)
    log.info("fitted %s curvature (%s Fisher) of %d layers on %d utterances", method.value, fisher.value,
             len(maps), curvature.num_utterances)
    return curvature


def batch_plan(features: Sequence, batch_size: int) -> list[list[int]]:
    """Indices of the batches: utterances sorted by their number of frames (stable), cut into batches."""
    frames = getattr(features, "num_frames", None) or [f.mel.shape[0] for f in features]
    order = sorted(range(len(features)), key=lambda i: frames[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _utt_ids(features: Sequence, indices: list[int]) -> list[str]:
    ids = getattr(features, "utt_ids", None)  # a FeatureStore knows them without reading the features
    return [ids[j] if ids is not None else features[j].utt_id for j in indices]


def data_fingerprint(features: Sequence) -> str:
    h = hashlib.sha256()
    if hasattr(features, "num_frames"):  # a FeatureStore: no tensor needs to be read
        rows = zip(features.utt_ids, features.speakers, features.num_frames, features.num_tokens)
    else:
        rows = ((f.utt_id, f.speaker, f.mel.shape[0], len(f.tokens)) for f in features)
    for utt_id, speaker, frames, tokens in rows:
        h.update(f"{utt_id}|{speaker}|{frames}|{tokens}\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- one batch
def _loss_function(backend, fisher: FisherType) -> Callable:
    """loss(batch, generator): the scalar whose gradients are recorded (the sum over utterances)."""
    if fisher is FisherType.EMPIRICAL:
        return lambda batch, generator: backend.loss(batch)[0] * len(batch)
    sampled_loss = backend.mc_fisher_loss()  # the model's own sampling of targets; refused by most models
    return lambda batch, generator: sampled_loss(batch, generator) * len(batch)


def position_masks(backend, batch) -> tuple[torch.Tensor, ...]:
    """The (B, T_i) masks of real positions of the time axes the model's layers run on: the backend's own
    (an optional method ``position_masks(batch)``) or else the mel frames and the text tokens."""
    own = getattr(backend, "position_masks", None)
    return tuple(own(batch)) if own is not None else (batch.frame_mask, token_mask(batch))


def token_mask(batch) -> torch.Tensor:
    """(B, T_tokens) True on real tokens."""
    return batch.token_mask


def _batch_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def fit_targets(backend, features: Sequence, targets: Sequence[str] | None) -> tuple[list[str], list[LinearMap]]:
    """The target layers of a fit (default ``backend.lora_targets()``) and their linear maps, after refusing a
    fit with no utterances or no layers."""
    if not features:
        raise ValueError("no utterances to fit the curvature on")
    targets = list(backend.lora_targets() if targets is None else targets)
    if not targets:
        raise ValueError("no target layers to fit the curvature of")
    return targets, linear_maps(backend.model, targets)


def record_planned_batch(backend, features: Sequence, plan: list[list[int]], i: int, batches, recorder, loss_fn,
                         seed: int):
    """The next batch of ``batches`` (batch ``i`` of ``plan``) on the model's device, and its recorded layer
    calls; None for the calls, with a warning naming its utterances, when its loss is not finite."""
    device = backend.device
    batch = next(batches).to(device, non_blocking=device.type == "cuda")
    calls = _record_batch(backend, batch, recorder, loss_fn, _batch_generator(seed, i))
    if calls is None:
        log.warning("non-finite loss on the batch of %s; its %d utterances are left out of the curvature",
                    ", ".join(_utt_ids(features, plan[i])), len(batch))
    return batch, calls


def _record_batch(backend, batch, recorder: LinearMapRecorder, loss_fn, generator):
    """Forward and backward of one batch; the recorded layer calls, or None when the loss is not finite."""
    recorder.clear()
    recorder.masks = position_masks(backend, batch)
    try:
        loss = loss_fn(batch, generator)
    except PositionMaskError as err:
        raise PositionMaskError(f"{err}. A model whose layers run on other time axes (e.g. Glow-TTS's squeezed "
                                "frames) needs a backend method position_masks(batch) giving their masks") from None
    if not torch.isfinite(loss):
        return None
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any target layer")
    layer_gradients(loss, recorder)
    unused = [name for name, calls in recorder.calls.items() if not calls]
    if unused:
        raise ValueError(f"target layer(s) {', '.join(unused)} were not called by the model's loss; "
                         "leave them out of the targets")
    return recorder.calls


@contextlib.contextmanager
def _fitting(model: torch.nn.Module, weights: list[torch.Tensor]):
    """Eval mode (no dropout) and gradients for the target weights, restored afterwards."""
    was_training = model.training
    flags = [w.requires_grad for w in weights]
    model.eval()
    for w in weights:
        w.requires_grad_(True)
    try:
        yield
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
        model.train(was_training)


# --------------------------------------------------------------------------- statistics
def _sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for the running sums, except on Apple's mps, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _on_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A fit state's sums or results on the fit's device (e.g. read from a file, or saved on another device)."""
    return {k: v.to(device=device, dtype=_sum_dtype(device)) for k, v in tensors.items()}


def _complete(sums: dict[str, torch.Tensor], maps: list[LinearMap], phase: str,
              device: torch.device) -> dict[str, torch.Tensor]:
    """The running sums of a pass with zeros for what no batch added to (a key appears with its first
    contribution; every process needs every key to add them up)."""
    shapes = {UTTERANCES: ()}
    for m in maps:
        out, inp = m.shape
        shapes[f"{m.name}.positions"] = ()
        if phase == "factors":
            shapes[f"{m.name}.A"], shapes[f"{m.name}.G"] = (inp, inp), (out, out)
        else:
            shapes[f"{m.name}.{'diag' if phase == 'diag' else 'S'}"] = (out, inp)
    return {k: sums[k] if k in sums else torch.zeros(shape, dtype=_sum_dtype(device), device=device)
            for k, shape in shapes.items()}


def _statistics(phase: str, maps: list[LinearMap], calls: dict[str, list[LayerCall]], num_utterances: int,
                results: dict, finite: bool) -> dict:
    """One batch's statistics, in float32 (see the module doc), keyed as the running sums (a key without a
    contribution left out; a stride-1 Conv1d's A as the blocks of its tap pairs, arranged by :func:`_fold`).
    A call without gradients counts as zero gradients. ``finite``: zero the padding of the layers' inputs and
    gradients by a multiplication, exact when it holds finite numbers (see :func:`_all_finite_diagonals`)."""
    stats = {}

    def add(key: str, term) -> None:
        if term is not None:
            stats[key] = term if key not in stats else stats[key] + term

    add(UTTERANCES, num_utterances)
    for m in maps:
        layer_calls = calls[m.name]
        for c in layer_calls:
            add(f"{m.name}.positions", c.mask.sum())
            if phase == "factors":
                add(f"{m.name}.A", c.input_gram(finite, blocks=True))
                add(f"{m.name}.G", c.grad_gram(finite))
        if phase == "factors":
            continue
        # per-utterance gradients ∇W_n = Σ_t g_nt x_ntᵀ, summed over the layer's calls, then squared
        per_utterance = None
        for c in layer_calls:
            grads = c.weight_grads()
            if grads is not None:
                per_utterance = grads if per_utterance is None else per_utterance + grads
        if per_utterance is not None and phase == "scalings":  # rotated into the K-FAC eigenbasis: Q_Gᵀ ∇W_n Q_A
            QG, QA = (results[f"{m.name}.{q}"].to(per_utterance.dtype) for q in ("QG", "QA"))
            per_utterance = QG.T @ per_utterance @ QA
        if per_utterance is not None:
            add(f"{m.name}.{'diag' if phase == 'diag' else 'S'}", (per_utterance ** 2).sum(0))
    return stats


def _all_finite_diagonals(stats: dict) -> bool:
    """Whether the diagonals of a batch's A and G are finite: an inf or nan anywhere in the rows of a Gram
    matrix reaches its diagonal, so this tells whether the padding held finite numbers only, and zeroing it
    by multiplication was exact (one host sync per batch on a GPU)."""
    diagonals = [_diagonal(v) for k, v in stats.items() if k.endswith((".A", ".G"))]
    return bool(torch.isfinite(torch.cat(diagonals)).all()) if diagonals else True


def _diagonal(gram: torch.Tensor) -> torch.Tensor:
    """The diagonal of a Gram matrix, or of a Conv1d's as blocks of tap pairs that of their first (which holds
    every frame an inf or nan could be on, see :func:`~tts_adapt.curvature.hooks._conv_input_gram`)."""
    return gram.diagonal() if gram.dim() == 2 else gram[0].diagonal()


def _accumulate(partial: dict, stats: dict) -> None:
    """Add a batch's statistics to the partial sums (in place; the first batch's tensors become them)."""
    for key, term in stats.items():
        if key in partial:
            partial[key] += term
        else:
            partial[key] = term


def _fold(sums: dict[str, torch.Tensor], partial: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The running sums plus the partial sums of the batches since, as new tensors (``sums`` stays as it was)."""
    partial = {k: tap_blocks_to_matrix(v) if torch.is_tensor(v) and v.dim() == 3 else v for k, v in partial.items()}
    dtype = _sum_dtype(device)
    folded = {k: v + partial[k] if k in partial else v for k, v in sums.items()}
    folded.update({k: torch.as_tensor(v, device=device).to(dtype) for k, v in partial.items() if k not in sums})
    return folded


def _finish_phase(phase: str, method: CurvatureMethod, sums: dict, maps: list[LinearMap], world: int) -> dict:
    """Normalised results of a finished pass (see the module doc), where the sums are."""
    n = sums[UTTERANCES].clamp_min(1.0)
    out = {}
    if phase != "scalings":
        out[UTTERANCES] = sums[UTTERANCES].clone()
    for m in maps:
        if phase == "factors":
            p = sums[f"{m.name}.positions"].clamp_min(1.0)
            A, G = sums[f"{m.name}.A"] / p, sums[f"{m.name}.G"] / n
            A, G = (A + A.T) / 2, (G + G.T) / 2  # exact symmetry despite rounding
            out.update({f"{m.name}.A": A, f"{m.name}.G": G, f"{m.name}.positions": sums[f"{m.name}.positions"]})
            if method is CurvatureMethod.EKFAC:
                for kind, factor in (("A", A), ("G", G)):
                    eig, Q = (t.contiguous() for t in torch.linalg.eigh(factor))
                    if world > 1:  # one eigenbasis for all processes, whatever their LAPACK does
                        eig, Q = _broadcast(eig), _broadcast(Q)
                    out[f"{m.name}.eig{kind}"], out[f"{m.name}.Q{kind}"] = eig.clamp_min(0.0), Q
        elif phase == "diag":
            out[f"{m.name}.diag"] = sums[f"{m.name}.diag"] / n
            out[f"{m.name}.positions"] = sums[f"{m.name}.positions"]
        else:
            out[f"{m.name}.S"] = sums[f"{m.name}.S"] / n
    return out


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t``, sent over the process group's device (NCCL sends GPU tensors only, gloo CPU ones)."""
    sent = t.to(group_device())
    dist.broadcast(sent, 0)
    return sent.to(t.device)


def _curvature(backend, method: CurvatureMethod, fisher: FisherType, maps: list[LinearMap], targets: list[str],
               state: FitState, key: dict, world: int) -> Curvature:
    r = state.results
    layers = [CurvatureLayer.of(m, int(r[f"{m.name}.positions"])) for m in maps]
    tensors = {f"{m.name}.{kind}": r[f"{m.name}.{kind}"].to(device="cpu", dtype=torch.float32)
               for m in maps for kind in TENSORS[method.value]}
    audio = backend.audio.to_dict() if hasattr(backend, "audio") and hasattr(backend.audio, "to_dict") else {}
    return Curvature(method=method.value, fisher=fisher.value, layers=layers, tensors=tensors,
                     num_utterances=int(r[UTTERANCES]), fingerprint=key["model"], targets=targets,
                     backend=getattr(backend, "name", ""), audio=audio,
                     info={"batch_size": key["batch_size"], "seed": key["seed"], "processes": world,
                           "data": key["data"], "mc_samples": 1 if fisher is FisherType.MC else 0})
