"""Step time of the selective strategy against plain LoRA, and its fraction of active blocks after a short run.

    python benchmarks/bench_strategy_selective.py [--model tts_adapt/pretrained/base] [--corpus work/corpus]
                                                  [--steps 30] [--batch-size 8] [--adapt-steps 150]

Data: the first ``--clips`` (20) training clips of the corpus's first target speaker, as in
``benchmarks/bench_adapt.py`` (same folder layout, same held-out split, the target conditioned on its d-vector).

Step timing: two copies of the model, one wrapped by the ``lora`` strategy and one by ``selective`` (the same
LoRA initialisation), each trained by its own :class:`~tts_adapt.models.trainer.Trainer` as ``adapt`` builds it
(AdamW, clipping; no validation or checkpoints). The loops take turns one step at a time on the same batches, so
that other jobs on the machine load both alike. A step is timed from the loop's ``on_batch_start`` to the end of
its ``on_train_batch_end`` (forward, loss terms, backward, clipping, optimizer step and the strategies' hooks:
selective's gates, its L1 term and the active fraction of the row); the first ``--warmup`` steps are not timed,
and selective's L1 penalty is on from the first timed step (``gate_warmup`` = ``--warmup``).
Goal: selective / lora <= 1.1.

Short run: one ``adapt()`` per strategy with the settings' defaults and ``--adapt-steps`` steps (selective's
L1 starts after ``gate_warmup``): best validation loss, the fraction of active blocks of the saved adapter, and the
size of each adapter file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
GOAL = 1.1


def batches_of_epoch(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, as ``adapt`` orders them."""
    from tts_adapt.adapt.train import shuffled_batches

    return shuffled_batches(n, batch_size, seed, epoch)


def step_times(args, clip_dir: Path, cache: Path) -> tuple[dict[str, float], int, float]:
    """Seconds per step of lora and selective (interleaved, same batches); also the number of training clips and
    the fraction of active blocks after the timed steps."""
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.adapter import TARGET_NAME, add_target_speaker, target_conditioning
    from tts_adapt.adapt.clips import read_target_clips, split_heldout
    from tts_adapt.adapt.strategies import get_strategy
    from tts_adapt.device import resolve_device, synchronize
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.trainer import Callback, LoopConfig, Trainer

    device = resolve_device(args.device)

    class StepTimer(Callback):
        def __init__(self):
            self.seconds, self.timed, self.t0 = 0.0, 0, 0.0

        def on_batch_start(self, trainer, batch):
            synchronize(device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, row, parts):
            synchronize(device)
            if trainer.step > args.warmup:
                self.seconds += time.perf_counter() - self.t0
                self.timed += 1

    steps = args.steps + args.warmup
    trainers, timers, strategies = {}, {}, {}
    d_vector = None
    for name in ("lora", "selective"):
        backend = TTSBackend.from_pretrained(args.model)
        clips, report = read_target_clips(clip_dir, backend.audio.sample_rate)
        train_clips, _ = split_heldout(clips, seed=0)
        if d_vector is None:
            d_vector = target_conditioning(backend, train_clips)
        rows = add_target_speaker(backend, d_vector)
        feats = backend.extract_features(train_clips, cache, report=report, progress=False)
        for f in feats:
            f.speaker = TARGET_NAME
        # selective's L1 on from the first timed step, so that its cost is timed too
        config = AdaptConfig(strategy=name, rank=args.rank, batch_size=args.batch_size, steps=steps,
                             gate_warmup=args.warmup)
        strategy = get_strategy(name).from_config(config)
        strategy.wrap(backend.model, backend.lora_targets(), rows)
        backend.to(device)
        params = strategy.trainable_parameters()
        optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
        timers[name], strategies[name] = StepTimer(), strategy
        trainers[name] = Trainer(
            backend.model, params, optimizer, backend.loss,
            epoch_batches=partial(batches_of_epoch, len(feats), config.batch_size, config.seed),
            make_batch=lambda idx, b=backend, fs=feats: b.collate([fs[i] for i in idx]),
            config=LoopConfig(steps=steps, checkpoint_every=steps + 1), callbacks=[strategy, timers[name]],
            progress=False, device=device)
    torch.manual_seed(0)
    for _ in range(steps):
        for name in ("lora", "selective"):
            trainers[name].fit(stop_after=1)
    per_step = {name: t.seconds / t.timed for name, t in timers.items()}
    return per_step, len(feats), strategies["selective"].active_fraction()


def short_runs(args, clip_dir: Path, cache: Path, out: Path) -> dict[str, dict]:
    """One adapt() per strategy with the default settings and --adapt-steps steps."""
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.train import adapt

    runs = {}
    for name in ("lora", "selective"):
        config = AdaptConfig(strategy=name, steps=args.adapt_steps, batch_size=args.batch_size, rank=args.rank)
        t0 = time.perf_counter()
        run = adapt(clip_dir, out / name, args.model, config, cache_dir=cache, progress=False, device=args.device)
        run["bench_wall"] = time.perf_counter() - t0
        run["bench_bytes"] = (out / name / "adapter_model.safetensors").stat().st_size
        runs[name] = run
    return runs


def main() -> None:
    from bench_adapt import target_clips

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tts_adapt" / "pretrained" / "base"), help="model folder")
    ap.add_argument("--corpus", default=str(ROOT / "work" / "corpus"), help="embedded corpus (tts_adapt layout)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per strategy")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--clips", type=int, default=20, help="target-speaker clips")
    ap.add_argument("--adapt-steps", type=int, default=150, help="steps of the short adapt() runs (0: skip them)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.adapt_steps < 0:
        raise SystemExit("--steps must be at least 1, --warmup and --adapt-steps at least 0")

    from tts_adapt.adapt.adapt_config import AdaptConfig

    cache = Path(os.environ.get("TTS_ADAPT_CACHE") or Path.home() / ".cache" / "tts_adapt")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip_dir = target_clips(args.corpus, args.clips, tmp / "clips")
        print(f"model {args.model}, CPU cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
              f"LoRA rank {args.rank}, batch {args.batch_size}, device {args.device}")
        per_step, n_train, active = step_times(args, clip_dir, cache)
        ratio = per_step["selective"] / per_step["lora"]
        print(f"{args.steps} timed steps each (interleaved, after {args.warmup} untimed), {n_train} training clips")
        print(f"{'strategy':<10} {'ms/step':>9} {'vs lora':>8}")
        print(f"{'lora':<10} {1000 * per_step['lora']:>9.1f} {1.0:>8.3f}")
        print(f"{'selective':<10} {1000 * per_step['selective']:>9.1f} {ratio:>8.3f}   goal <= {GOAL} "
              f"({'met' if ratio <= GOAL else 'NOT met'}); active blocks after the timed steps: {active:.0%}")
        if args.adapt_steps:
            defaults = AdaptConfig(strategy="selective")
            print(f"short runs: adapt(), {args.adapt_steps} steps, selective defaults gate_threshold "
                  f"{defaults.gate_threshold:g}, gate_margin {defaults.gate_margin:g}, gate_l1 {defaults.gate_l1:g}, "
                  f"gate_warmup {defaults.gate_warmup}")
            runs = short_runs(args, clip_dir, cache, tmp / "adapters")
            for name, run in runs.items():
                gates = run.get("selective")
                blocks = (f"; active blocks {gates['active_blocks']} of {gates['blocks']} "
                          f"({gates['active_fraction']:.0%})") if gates else ""
                print(f"  {name:<10} best val loss {run['best_val_loss']:.4f} at step {run['best_step']} "
                      f"({run['steps']} steps, {run['stopped']}), adapter {run['bench_bytes'] / 1024:.0f} KiB, "
                      f"wall {run['bench_wall']:.0f} s{blocks}")
            gates = runs["selective"]["selective"]
            trace = [(r["step"], r["active_fraction"]) for r in runs["selective"]["curve"] if r["step"] % 25 == 0]
            print("  selective active fraction by step: " + ", ".join(f"{s}: {f:.0%}" for s, f in trace))
            if gates["inactive"]:
                print("  inactive: " + ", ".join(gates["inactive"]))


if __name__ == "__main__":
    main()
