"""Step time of the ilora strategy against plain LoRA, measured side by side through ``adapt()``.

    python benchmarks/bench_strategy_ilora.py [--model tts_adapt/pretrained/base] [--corpus work/corpus]
                                              [--target-dir work/target/clips] [--steps 12] [--rounds 3]

Three runs of ``adapt()`` on the same target clips, interleaved round by round (so other jobs on the machine
load them alike), each ``--steps`` steps long:

* ``lora``: plain LoRA, ``--batch-size`` target clips per step;
* ``lora+replay-size``: plain LoRA on batches as large as ilora's mixed ones (``--batch-size`` +
  ``--replay-batch`` clips): what replay alone costs;
* ``ilora``: ``--batch-size`` target clips + ``--replay-batch`` replayed pretraining utterances of
  ``--corpus`` per step, the slow adapter's forward on the replayed rows, the consistency loss and the EMA.

A step's time is the wall time between two ``on_step`` calls (forward, backward, optimizer step and every
strategy hook); the first step of a run (warm-up) and the last (validation) are left out, and checkpoints are
written only at the end. Printed: the median ms per step of each, and ilora's ratio to both LoRA runs. The
goal is ilora (with its replay) <= 1.6 x plain LoRA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from strategy_timing import add_common_options, check_common_options, step_times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, "the base model's pretraining corpus (what ilora replays)")
    parser.add_argument("--replay-batch", type=int, default=None, help="default: the strategy's (AdaptConfig)")
    args = parser.parse_args(argv)
    check_common_options(parser, args)

    import torch

    from tts_adapt.adapt.adapt_config import AdaptConfig

    if args.replay_batch is None:
        args.replay_batch = AdaptConfig().replay_batch

    common = {"steps": args.steps, "val_every": args.steps, "checkpoint_every": args.steps, "patience": 1, "seed": 0}
    configs = {
        "lora": AdaptConfig(strategy="lora", batch_size=args.batch_size, **common),
        "lora+replay-size": AdaptConfig(strategy="lora", batch_size=args.batch_size + args.replay_batch, **common),
        "ilora": AdaptConfig(strategy="ilora", batch_size=args.batch_size, replay_batch=args.replay_batch, **common),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="bench-ilora-") as tmp:
        for r in range(args.rounds):
            for name, config in configs.items():
                out = Path(tmp) / f"{name}-{r}"
                times[name] += step_times(args.target_dir, args.model, config, out, args.cache_dir,
                                          replay_data=args.corpus if config.strategy == "ilora" else None)
                print(f"round {r + 1}/{args.rounds} {name}: median {1000 * statistics.median(times[name]):.0f} ms/step "
                      f"so far", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    print()
    print(f"{'run':<18} {'ms/step':>8} {'steps timed':>12}")
    for name in configs:
        print(f"{name:<18} {1000 * median[name]:>8.0f} {len(times[name]):>12}")
    print()
    ratio = median["ilora"] / median["lora"]
    print(f"ilora / lora               = {ratio:.2f}  (goal <= 1.6: {'met' if ratio <= 1.6 else 'not met'})")
    print(f"ilora / lora (replay size) = {median['ilora'] / median['lora+replay-size']:.2f}")
    print(f"(batch {args.batch_size} target clips + {args.replay_batch} replayed; {args.steps} steps x {args.rounds} "
          f"rounds, torch threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
