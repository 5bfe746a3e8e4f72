"""Cost of fitting the curvature, side by side with the plain gradient and with curvlinops, in one run.

    python benchmarks/bench_curvature.py --model DIR --corpus DIR [--utterances 64] [--batch-size 8] [--device auto]

Data: the first N pretraining utterances (speaker set "pretrain", split "train") of the embedded
corpus, their features from the cache (``$TTS_ADAPT_CACHE`` or ``~/.cache/tts_adapt``; extracted
once), held in memory. Every measurement goes over the same batches, those of
:func:`tts_adapt.curvature.fit.batch_plan` (utterances sorted by length), in eval mode, after one
untimed warm-up batch, on ``--device`` (the model is moved there; batches are collated on the CPU and
moved, as in the fit). Measured:

(a) plain: collate + ``B * backend.loss(batch)`` + ``torch.autograd.grad`` w.r.t. the parameters of the
    default target layers (``backend.lora_targets()``), i.e. the forward and backward pass of a training
    step on those layers, without recording anything (the fit itself asks autograd for the gradients at the
    layers' outputs only, and skips the weight gradients: see ``tts_adapt.curvature.hooks.layer_gradients``);
(b) ``fit_curvature(method="kfac")`` on the same targets and batches, and its ratio to (a)
    (goal <= 1.3: K-FAC costs at most 30 % over the gradient it is made from);
(c) the same for ``ekfac`` (two passes over the data, so about 2x (a) at best) and ``diag``;
(d) against curvlinops' ``KFACLinearOperator`` (empirical Fisher, KFAC-expand) on the same model, the
    same batches and the same layers. curvlinops only treats ``nn.Linear`` (and ``Conv2d``) modules and
    only MSE / cross-entropy / BCE losses of a model output, so it is given the target layers that are
    ``nn.Linear`` (for FastPitch that is ``proj_g``, the d-vector projection: attention projections are
    not called as modules and the convolutions are Conv1d), and a small ``nn.Module`` wrapper whose
    "output" for a batch is sqrt(B * backend.loss(batch)) with target 0 under ``MSELoss(reduction="sum")``:
    its loss is B * backend.loss(batch), the very scalar our fit differentiates, so both see the same
    gradients. Timed: our ``fit_curvature(targets=<those layers>)`` against building the operator plus
    ``compute_kronecker_factors()``, alternately ``--repeats`` times each (the fastest of each counts); the
    ratio ours / curvlinops (goal <= 1: not slower). The factors are
    checked to agree (A equal up to padding positions, which curvlinops counts and we do not; curvlinops'
    G = N x ours). Both run the whole model's forward and backward, so this compares the overhead of the
    statistics on top of the same passes.
(e) the size of the saved curvature file (safetensors, float32) over the bytes of the adapted layers'
    weight matrices (float32, biases not counted), for kfac (goal <= 2), ekfac and diag.

Timings are wall-clock (perf_counter), with the device's queued work waited for at both ends
(:func:`tts_adapt.device.synchronize`), and on a CPU also the CPU time of this process (process_time),
which other jobs on a shared machine disturb much less. (a) and (b) are measured alternately
``--repeats`` times and the fastest of each counts, so that a load that comes and goes on a shared
machine hits both alike. Run with OMP_NUM_THREADS set when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from tts_adapt.curvature import fit_curvature, linear_maps
from tts_adapt.curvature.fit import _fitting, batch_plan
from tts_adapt.device import resolve_device, synchronize


def load_data(model_dir: str, corpus: str, n: int):
    from tts_adapt.data.readers import read_dataset
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.features import extract_features

    backend = TTSBackend.from_pretrained(model_dir)
    utts, _ = read_dataset(corpus, "tts_adapt", speaker_sets=["pretrain"], splits=["train"], validate_audio=False)
    utts = utts[:n]
    cache = Path(os.environ.get("TTS_ADAPT_CACHE") or Path.home() / ".cache" / "tts_adapt")
    features = extract_features(utts, cache, backend.audio, backend.text_to_ids, backend.text_config,
                                progress=False)
    return backend, features


def target_weights(backend, targets: list[str]) -> list[torch.Tensor]:
    """The parameters fit_curvature differentiates w.r.t. (those of the target modules, deduplicated)."""
    return list({id(p): p for t in targets for p in backend.model.get_submodule(t).parameters()}.values())


def time_plain(backend, features, plan, targets) -> tuple[float, float]:
    """Collate, move, forward, backward w.r.t. the targets' parameters, over all batches (eval mode, as the
    fit): (wall-clock seconds, CPU seconds of this process)."""
    weights = target_weights(backend, targets)
    device = backend.device
    with _fitting(backend.model, weights):
        batch = backend.collate([features[j] for j in plan[0]]).to(device)  # warm-up
        torch.autograd.grad(backend.loss(batch)[0] * len(batch), weights, allow_unused=True)
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for idx in plan:
            batch = backend.collate([features[j] for j in idx]).to(device)
            loss = backend.loss(batch)[0] * len(batch)
            torch.autograd.grad(loss, weights, allow_unused=True)
        synchronize(device)
        return time.perf_counter() - t0, time.process_time() - c0


def time_fit(backend, features, batch_size, method, targets=None, warm_up: bool = True):
    """(wall-clock seconds, CPU seconds of this process) of one fit on the backend's device, and the
    curvature."""
    if warm_up:
        fit_curvature(backend, features[:batch_size], method="kfac", targets=targets, batch_size=batch_size,
                      progress=False)  # one batch
    synchronize(backend.device)
    t0, c0 = time.perf_counter(), time.process_time()
    curv = fit_curvature(backend, features, method=method, targets=targets, batch_size=batch_size, progress=False)
    synchronize(backend.device)
    return (time.perf_counter() - t0, time.process_time() - c0), curv


class LossAsOutput(nn.Module):
    """curvlinops calls ``model(X)`` and applies a standard loss to the output: for ``X = {"batch": Batch}``
    the output is sqrt(B * backend.loss(batch)), shape (1, 1), so that MSELoss(reduction="sum") against a
    zero target is B * backend.loss(batch) and its gradients are those of the TTS loss."""

    def __init__(self, backend):
        super().__init__()
        self.model = backend.model  # a submodule, so curvlinops finds the layers of the parameters
        self._loss = backend.loss

    def forward(self, X):
        batch = X["batch"]
        loss = self._loss(batch)[0] * len(batch)
        return loss.clamp_min(1e-12).sqrt().reshape(1, 1)


class CollatingData:
    """The batches of ``plan`` as curvlinops data ``({"batch": Batch}, zero target)``, collated on
    iteration (as our fit collates them), so both sides pay for collating."""

    def __init__(self, backend, features, plan):
        self.backend, self.features, self.plan = backend, features, plan

    def __iter__(self):
        device = self.backend.device
        for idx in self.plan:
            yield ({"batch": self.backend.collate([self.features[j] for j in idx]).to(device)},
                   torch.zeros(1, 1, device=device))


def compare_curvlinops(backend, features, plan, batch_size, repeats: int) -> dict | None:
    try:
        from curvlinops import KFACLinearOperator
    except ImportError:
        return None
    targets = [t for t in backend.lora_targets() if type(backend.model.get_submodule(t)) is nn.Linear]
    if not targets:
        return None
    wrapper = LossAsOutput(backend)
    params = [backend.model.get_submodule(t).weight for t in targets]

    def theirs(data):
        op = KFACLinearOperator(wrapper, nn.MSELoss(reduction="sum"), params, data, fisher_type="empirical",
                                kfac_approx="expand", check_deterministic=False, num_data=len(features),
                                num_per_example_loss_terms=1, batch_size_fn=lambda X: len(X["batch"]))
        op.compute_kronecker_factors()
        return op

    weights = target_weights(backend, targets)
    with _fitting(backend.model, weights):  # eval mode and gradients, as in our fit
        theirs(CollatingData(backend, features, plan[:1]))  # warm-up
    fit_curvature(backend, features[:batch_size], targets=targets, batch_size=batch_size, progress=False)
    ours_s, theirs_s = [], []
    for _ in range(repeats):  # alternating, so that both see the same load
        (seconds, _), ours = time_fit(backend, features, batch_size, "kfac", targets, warm_up=False)
        ours_s.append(seconds)
        with _fitting(backend.model, weights):
            synchronize(backend.device)
            t0 = time.perf_counter()
            op = theirs(CollatingData(backend, features, plan))
            synchronize(backend.device)
            theirs_s.append(time.perf_counter() - t0)
    state = op.state_dict()
    n = ours.num_utterances
    worst = {}
    for t in targets:
        key = f"model.{t}"
        for kind, mine, other in (("A", ours.tensors[f"{t}.A"], state["input_covariances"][key]),
                                  ("G", n * ours.tensors[f"{t}.G"], state["gradient_covariances"][key])):
            other = other.to("cpu", mine.dtype)
            worst[kind] = max(worst.get(kind, 0.0), float((mine - other).norm() / other.norm().clamp_min(1e-30)))
    return {"targets": targets, "ours_s": min(ours_s), "theirs_s": min(theirs_s), "rel_diff": worst}


def weight_bytes(backend, targets) -> int:
    return sum(m.out_features * m.in_features * 4 for m in linear_maps(backend.model, targets))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--corpus", required=True, help="embedded corpus (tts_adapt layout)")
    ap.add_argument("--utterances", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating runs of (a) and (b), and of the curvlinops comparison (the fastest counts)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--skip-curvlinops", action="store_true")
    args = ap.parse_args()

    device = resolve_device(args.device)
    backend, features = load_data(args.model, args.corpus, args.utterances)
    backend.to(device)
    plan = batch_plan(features, args.batch_size)
    targets = backend.lora_targets()
    frames = sum(f.mel.shape[0] for f in features)
    print(f"device: {device}, CPU cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"model: {backend.name} ({backend.num_parameters() / 1e6:.2f} M parameters), {len(targets)} target modules "
          f"({len(linear_maps(backend.model, targets))} weight matrices)")
    print(f"data: {len(features)} utterances ({frames} frames), {len(plan)} batches of {args.batch_size}")

    plain, kfac, curvatures = [], [], {}
    for i in range(args.repeats):  # alternating, so that both see the same load
        plain.append(time_plain(backend, features, plan, targets))
        seconds, curvatures["kfac"] = time_fit(backend, features, args.batch_size, "kfac", warm_up=i == 0)
        kfac.append(seconds)
    # the fastest run of each, by wall clock and by CPU time (each taken on its own)
    plain_s = tuple(min(t[j] for t in plain) for j in (0, 1))
    fits = {"kfac": tuple(min(t[j] for t in kfac) for j in (0, 1))}
    for method in ("ekfac", "diag"):
        fits[method], curvatures[method] = time_fit(backend, features, args.batch_size, method, warm_up=False)
    wbytes, sizes = weight_bytes(backend, targets), {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, curv in curvatures.items():
            path = Path(tmp) / f"{method}.safetensors"
            curv.save(path)
            sizes[method] = path.stat().st_size
    cl = None
    if not args.skip_curvlinops:
        cl = compare_curvlinops(backend, features, plan, args.batch_size, args.repeats)

    print("runs of (a) plain / (b) kfac, wall-clock s:", ", ".join(f"{p[0]:.2f} / {k[0]:.2f}" for p, k in zip(plain, kfac)))
    print("runs of (a) plain / (b) kfac, CPU s:       ", ", ".join(f"{p[1]:.2f} / {k[1]:.2f}" for p, k in zip(plain, kfac)))
    cpu = device.type == "cpu"  # on a GPU the process's CPU time says little about the work
    rows = [("plain forward+backward, s", f"{plain_s[0]:.2f}", ""),
            ("plain per utterance, ms", f"{1000 * plain_s[0] / len(features):.1f}", "")]
    for method, goal in (("kfac", "<= 1.3"), ("ekfac", ""), ("diag", "")):
        rows.append((f"{method} fit, s", f"{fits[method][0]:.2f}", ""))
        rows.append((f"{method} fit / plain, wall clock", f"{fits[method][0] / plain_s[0]:.2f}", goal))
        if cpu:
            rows.append((f"{method} fit / plain, CPU time", f"{fits[method][1] / plain_s[1]:.2f}", goal))
    if cl is not None:
        layers = ", ".join(cl["targets"])
        rows += [(f"kfac of nn.Linear [{layers}]: ours, s", f"{cl['ours_s']:.2f}", ""),
                 ("  curvlinops KFACLinearOperator, s", f"{cl['theirs_s']:.2f}", ""),
                 ("  ours / curvlinops", f"{cl['ours_s'] / cl['theirs_s']:.2f}", "<= 1"),
                 ("  factor rel. difference A / G (N x ours)", f"{cl['rel_diff']['A']:.1e} / {cl['rel_diff']['G']:.1e}",
                  "")]
    else:
        rows.append(("curvlinops comparison", "skipped", ""))
    rows.append(("adapted weights (float32), MB", f"{wbytes / 1e6:.2f}", ""))
    for method, goal in (("kfac", "<= 2"), ("ekfac", ""), ("diag", "")):
        rows.append((f"{method} file / weights", f"{sizes[method] / wbytes:.2f}", goal))
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'measure':<{width}} {'value':>16} {'goal':>8}")
    for name, value, goal in rows:
        print(f"{name:<{width}} {value:>16} {goal:>8}")


if __name__ == "__main__":
    main()
