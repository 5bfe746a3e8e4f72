"""What the strategy benchmarks (``bench_strategy_*.py``) share: the options every one takes and the
per-step times of one ``adapt()`` run."""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_common_options(parser: argparse.ArgumentParser, corpus_help: str) -> None:
    parser.add_argument("--model", type=Path, default=REPO / "tts_adapt" / "pretrained" / "base")
    parser.add_argument("--corpus", type=Path, default=REPO / "work" / "corpus", help=corpus_help)
    parser.add_argument("--target-dir", type=Path, default=REPO / "work" / "target" / "clips",
                        help="target clips (wav + txt; default: the quickstart's)")
    parser.add_argument("--steps", type=int, default=12, help="steps per run (default: 12)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration (default: 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: the toolkit's)")


def check_common_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.steps < 4:
        parser.error("--steps must be at least 4 (the first and last steps are not timed)")
    for path, what in ((args.model, "--model"), (args.corpus, "--corpus"), (args.target_dir, "--target-dir")):
        if not path.is_dir():
            parser.error(f"{what} {path}: no such folder (the corpus and target clips come from tts-adapt quickstart)")


def step_times(target_dir: Path, model: Path, config, out: Path, cache_dir: Path | None, **adapt_kwargs) -> list[float]:
    """Seconds of each step of one ``adapt()`` run (``adapt_kwargs``: its curvature, replay data), without its
    first and last step."""
    from tts_adapt.adapt.train import adapt

    stamps: list[float] = []

    def on_step(step: int, total: int, row: dict) -> bool:
        stamps.append(time.perf_counter())
        return True

    adapt(target_dir, out, model, config, cache_dir=cache_dir, progress=False, on_step=on_step, **adapt_kwargs)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return gaps[:-1]  # the last gap holds the final validation
