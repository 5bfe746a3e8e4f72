"""Cost of the Laplace penalty in LoRA adaptation steps, side by side in one run, and one real adaptation.

    python benchmarks/bench_adapt.py --model DIR --corpus DIR [--steps 20] [--batch-size 8]
                                     [--adapt-steps 30] [--curvature FILE ...] [--device auto] [--precision fp32]

Data: the first ``--clips`` (20) training clips of the corpus's first target speaker (speaker set
"target", split "train"), copied with their transcripts into a temporary folder of ``.wav`` + ``.txt``
files (the layout ``tts-adapt adapt`` reads), conditioned on their d-vector and split as
:func:`tts_adapt.adapt.train.adapt` does (held-out clips left out of the steps).

Curvature: the ``--curvature`` files (their method is read from each file), else kfac, ekfac and diag
fitted here on the first ``--fit-utterances`` (32) pretraining utterances (speaker set "pretrain",
split "train"), on the default target layers.

Step timing: the model is wrapped once with peft LoRA (rank ``--rank``, alpha 16) on the default
targets; every strategy has its own AdamW and its own copy of the LoRA weights (all start from the
same initialisation). The steps are interleaved: at each step every strategy, in turn, loads its LoRA
weights (untimed) and runs one timed step on the same batch, exactly as ``adapt()`` does it: collate,
forward and TTS loss, penalty (λ/2 · P, with ``lora_factors`` of the peft model), backward, gradient
clipping, optimizer step (train mode). Interleaving keeps the strategies under the same load when other
jobs share the machine. One untimed warm-up step first. λ = the curvature's number of utterances
(the same λ for l2). Printed: ms per step, steps per second and the ratio to plain LoRA (no penalty); goal
for kfac <= 1.05.

Device: ``--device`` (default auto: a CUDA GPU when there is one) holds the model, the batches and the
curvature; ``--precision`` bf16/fp16 runs the forward under autocast (the penalty in fp32, fp16 with a
gradient scaler), as ``adapt`` does. GPU timings wait for the device (``torch.cuda.synchronize``).

Full adaptation: one ``adapt()`` run (strategy kfac, ``AdaptConfig(steps=--adapt-steps)``, the kfac
curvature) on the 20 clips, its wall time (model loading, d-vector, features, validations and saving
included), and an extrapolation to 200 steps and to the config's default number of steps:
fixed part (wall - steps x the kfac step time measured above) + steps x that step time. It runs in
the same process after the step timing, so the speaker encoder is already loaded and the clips'
features are cached: a first run in a fresh process has a larger fixed part.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tts_adapt.device import check_precision, describe_device, resolve_device

STRATEGIES = ("lora", "kfac", "ekfac", "diag", "l2")
GOALS = {"kfac": "<= 1.05"}


def target_clips(corpus: str, n: int, folder: Path) -> Path:
    """The first ``n`` training clips of the corpus's first target speaker, as ``<id>.wav`` + ``<id>.txt``."""
    from tts_adapt.data.readers import read_dataset

    utts, _ = read_dataset(corpus, "tts_adapt", speaker_sets=["target"], splits=["train"], validate_audio=False)
    if not utts:
        raise SystemExit(f"{corpus}: no target-speaker training clips")
    speaker = utts[0].speaker
    clips = [u for u in utts if u.speaker == speaker][:n]
    folder.mkdir(parents=True)
    for u in clips:
        name = Path(u.audio_path).stem
        shutil.copyfile(u.audio_path, folder / f"{name}.wav")
        (folder / f"{name}.txt").write_text(u.text + "\n")
    print(f"target speaker {speaker}: {len(clips)} clips")
    return folder


def curvatures(backend, args, cache: Path, tmp: Path) -> dict[str, Path]:
    """Curvature files by method: the given ones, the others fitted here (and saved in ``tmp``)."""
    from tts_adapt.curvature import Curvature, fit_curvature
    from tts_adapt.data.readers import read_dataset
    from tts_adapt.models.features import extract_features

    paths = {}
    for p in args.curvature or []:
        paths[Curvature.load(p, backend).method] = Path(p)
    missing = [m for m in ("kfac", "ekfac", "diag") if m not in paths]
    if missing:
        utts, _ = read_dataset(args.corpus, "tts_adapt", speaker_sets=["pretrain"], splits=["train"],
                               validate_audio=False)
        feats = extract_features(utts[:args.fit_utterances], cache, backend.audio, backend.text_to_ids,
                                 backend.text_config, progress=False)
        for method in missing:
            t0 = time.perf_counter()
            curv = fit_curvature(backend, feats, method=method, batch_size=args.batch_size, progress=False)
            print(f"fitted {method} on {len(feats)} utterances in {time.perf_counter() - t0:.1f} s")
            paths[method] = tmp / f"{method}.safetensors"
            curv.save(paths[method])
    return paths


def time_steps(args, clip_dir: Path, curv_paths: dict[str, Path], cache: Path) -> tuple[dict, int, int]:
    """Seconds per step of each strategy (interleaved, same batches); also λ and the number of training clips."""
    from tts_adapt.adapt.lora import adapter_parameters, lora_factors, wrap_with_lora
    from tts_adapt.adapt.strategies import get_strategy
    from tts_adapt.adapt.clips import read_target_clips, split_heldout
    from tts_adapt.adapt.adapter import TARGET_NAME, add_target_speaker, target_conditioning
    from tts_adapt.adapt.train import shuffled_batches
    from tts_adapt.curvature import Curvature
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.features import extract_features

    from tts_adapt.device import autocast, grad_scaler, synchronize

    device = resolve_device(args.device)
    backend = TTSBackend.from_pretrained(args.model)
    curvs = {m: Curvature.load(p, backend).to(device) for m, p in curv_paths.items()}
    lam = float(curvs["kfac"].num_utterances)
    clips, report = read_target_clips(clip_dir, backend.audio.sample_rate)
    train_clips, _ = split_heldout(clips, seed=0)
    add_target_speaker(backend, target_conditioning(backend, train_clips))
    feats = extract_features(train_clips, cache, backend.audio, backend.text_to_ids, backend.text_config,
                             report=report, progress=False)
    for f in feats:
        f.speaker = TARGET_NAME

    targets = backend.lora_targets()
    for p in backend.model.parameters():
        p.requires_grad_(False)
    peft_model = wrap_with_lora(backend.model, targets, rank=args.rank, alpha=16.0, seed=0)
    backend.to(device)
    params = list(adapter_parameters(peft_model).values())
    scaler = grad_scaler(device, args.precision)
    penalties, optimizers, weights = {}, {}, {}
    for name in STRATEGIES:
        penalties[name] = get_strategy(name)(curvs.get(name))
        penalties[name].check_layers(lora_factors(peft_model))
        optimizers[name] = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
        weights[name] = [p.detach().clone() for p in params]
    # the batches of adapt(): epochs of seeded permutations
    order: list[list[int]] = []
    epoch = 0
    while len(order) < args.steps + 1:
        order += shuffled_batches(len(feats), args.batch_size, 0, epoch)
        epoch += 1
    seconds = dict.fromkeys(STRATEGIES, 0.0)
    backend.model.train()
    torch.manual_seed(0)
    for step, idx in enumerate(order[:args.steps + 1]):
        for name in STRATEGIES:
            with torch.no_grad():
                for p, w in zip(params, weights[name]):
                    p.copy_(w)
            penalty, optimizer = penalties[name], optimizers[name]
            synchronize(device)
            t0 = time.perf_counter()
            batch = backend.collate([feats[i] for i in idx]).to(device, non_blocking=True)
            with autocast(device, args.precision):
                tts_loss, _ = backend.loss(batch)
            pen = penalty(lora_factors(peft_model))  # (plain LoRA's is an exact zero)
            loss = tts_loss.float() + 0.5 * lam * pen
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                scaler.step(optimizer)
                scaler.update()
            synchronize(device)
            if step > 0:  # step 0 is the warm-up
                seconds[name] += time.perf_counter() - t0
            with torch.no_grad():
                for p, w in zip(params, weights[name]):
                    w.copy_(p)
    return {k: v / args.steps for k, v in seconds.items()}, lam, len(feats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--corpus", required=True, help="embedded corpus (tts_adapt layout)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per strategy")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--clips", type=int, default=20, help="target-speaker clips")
    ap.add_argument("--fit-utterances", type=int, default=32, help="pretraining utterances of the quick fits")
    ap.add_argument("--curvature", nargs="*", help="curvature files to use instead of quick fits")
    ap.add_argument("--adapt-steps", type=int, default=30, help="steps of the full adapt() run (0: skip it)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args()
    args.precision = check_precision(args.precision, resolve_device(args.device))

    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.train import adapt
    from tts_adapt.models.base import TTSBackend

    cache = Path(os.environ.get("TTS_ADAPT_CACHE") or Path.home() / ".cache" / "tts_adapt")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip_dir = target_clips(args.corpus, args.clips, tmp / "clips")
        base = TTSBackend.from_pretrained(args.model)
        curv_paths = curvatures(base, args, cache, tmp)
        print(f"device: {describe_device(resolve_device(args.device))}, precision {args.precision}; "
              f"CPU cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, model: {base.name} "
              f"({base.num_parameters() / 1e6:.2f} M parameters), {len(base.lora_targets())} target modules, "
              f"LoRA rank {args.rank}")
        del base
        per_step, lam, n_train = time_steps(args, clip_dir, curv_paths, cache)
        print(f"{args.steps} timed steps per strategy, batch {args.batch_size} of {n_train} training clips, "
              f"lambda = {lam:g}")
        print(f"{'strategy':<10} {'ms/step':>9} {'steps/s':>8} {'vs lora':>8} {'goal':>8}")
        for name in STRATEGIES:
            print(f"{name:<10} {1000 * per_step[name]:>9.1f} {1 / per_step[name]:>8.2f} "
                  f"{per_step[name] / per_step['lora']:>8.3f} {GOALS.get(name, ''):>8}")
        if args.adapt_steps > 0:
            config = AdaptConfig(strategy="kfac", lam=lam, steps=args.adapt_steps, batch_size=args.batch_size,
                                 rank=args.rank)
            t0 = time.perf_counter()
            card = adapt(clip_dir, tmp / "adapter", args.model, config, curvature=curv_paths["kfac"],
                         cache_dir=cache, progress=False, device=args.device, precision=args.precision)
            wall = time.perf_counter() - t0
            fixed = max(wall - card["steps"] * per_step["kfac"], 0.0)
            print(f"adapt(): kfac, {card['train_clips']} training + {card['val_clips']} held-out clips, "
                  f"{card['steps']} steps ({card['stopped']}): wall {wall:.1f} s "
                  f"(fixed part about {fixed:.1f} s)")
            for steps in sorted({200, AdaptConfig().steps}):
                print(f"  extrapolated to {steps} steps: {fixed + steps * per_step['kfac']:.0f} s")


if __name__ == "__main__":
    main()
