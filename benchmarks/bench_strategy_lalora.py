"""Step time of the lalora strategy against plain LoRA (and LoRA + K-FAC on ΔW), side by side through ``adapt()``.

    python benchmarks/bench_strategy_lalora.py [--model tts_adapt/pretrained/base] [--corpus work/corpus]
                                               [--target-dir work/target/clips] [--steps 12] [--rounds 3]
                                               [--fit-utterances 32]

Curvature: lalora-kfac and lalora-diag (at peft's initialisation, the adaptation's rank, alpha and seed) and
kfac, fitted here on ``--fit-utterances`` pretraining utterances of ``--corpus`` (the penalty's cost does not
depend on how many).

Runs of ``adapt()`` on the same target clips, interleaved round by round (so other jobs on the machine load
them alike), each ``--steps`` steps long: ``lora`` (no penalty), ``kfac`` (K-FAC on ΔW), ``lalora-kfac`` and
``lalora-diag`` (the lalora strategy on either file, with its default prior precision on A). A step's time is
the wall time between two ``on_step`` calls (forward, backward, penalty, optimizer step and every hook); the
first step of a run (warm-up) and the last (validation) are left out, and checkpoints are written only at the
end. Printed: the median ms per step of each and its ratio to plain LoRA. The goal is lalora <= 1.1 x LoRA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from strategy_timing import add_common_options, check_common_options, step_times

GOAL = 1.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, "the base model's pretraining corpus (the curvature's data)")
    parser.add_argument("--fit-utterances", type=int, default=32, help="pretraining utterances of the fits")
    args = parser.parse_args(argv)
    check_common_options(parser, args)

    import torch

    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.strategies.lalora import LoraPointBuilder
    from tts_adapt.curvature.run import fit_curvature_file

    common = {"steps": args.steps, "val_every": args.steps, "checkpoint_every": args.steps, "patience": 1, "seed": 0,
              "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="bench-lalora-") as tmp:
        files = {}
        for method in ("kfac", "lalora-kfac", "lalora-diag"):
            files[method] = Path(tmp) / f"{method}.safetensors"
            point = LoraPointBuilder(rank=AdaptConfig.rank, alpha=AdaptConfig.alpha, lora_seed=0, progress=False) \
                if method.startswith("lalora") else None
            fit_curvature_file(args.model, args.corpus, files[method], method=method,
                               num_utterances=args.fit_utterances, workers=1, cache_dir=args.cache_dir,
                               progress=False, lora_point=point)
        runs = {
            "lora": (AdaptConfig(strategy="lora", **common), None),
            "kfac": (AdaptConfig(strategy="kfac", **common), files["kfac"]),
            "lalora-kfac": (AdaptConfig(strategy="lalora", **common), files["lalora-kfac"]),
            "lalora-diag": (AdaptConfig(strategy="lalora", **common), files["lalora-diag"]),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(args.rounds):
            for name, (config, curvature) in runs.items():
                out = Path(tmp) / f"{name}-{r}"
                times[name] += step_times(args.target_dir, args.model, config, out, args.cache_dir,
                                          curvature=curvature)
                print(f"round {r + 1}/{args.rounds} {name}: median {1000 * statistics.median(times[name]):.0f} "
                      "ms/step so far", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    print()
    print(f"{'run':<12} {'ms/step':>8} {'/ lora':>7} {'steps timed':>12}")
    for name in runs:
        print(f"{name:<12} {1000 * median[name]:>8.0f} {median[name] / median['lora']:>7.3f} {len(times[name]):>12}")
    print()
    for name in ("lalora-kfac", "lalora-diag"):
        ratio = median[name] / median["lora"]
        print(f"{name} / lora = {ratio:.3f}  (goal <= {GOAL}: {'met' if ratio <= GOAL else 'not met'})")
    print(f"(batch {args.batch_size} clips; {args.steps} steps x {args.rounds} rounds, torch threads "
          f"{torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
