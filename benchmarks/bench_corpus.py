"""Corpus-build throughput: one process against all cores, side by side in one run.

    python benchmarks/bench_corpus.py [--speakers 16] [--utterances 12]

Prints utterances/s and seconds of audio per second of wall time for 1 worker
and for every core, and their ratio (the speed-up of parallel generation).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tts_adapt.data.corpus import CorpusConfig, build_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speakers", type=int, default=16)
    ap.add_argument("--utterances", type=int, default=12)
    args = ap.parse_args()
    config = CorpusConfig(speakers=args.speakers, utterances=args.utterances, parallel=2, heldout=1,
                          unseen_speakers=2, target_speakers=2)
    cores = os.cpu_count() or 1
    rows = []
    for workers in sorted({1, cores}):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = build_corpus(Path(tmp) / "c", config, workers=workers, progress=False)
            wall = time.perf_counter() - t0
        rows.append((workers, summary.utterances / wall, summary.hours * 3600 / wall, wall))
    print(f"corpus build, {config.speakers} speakers x {config.utterances} utterances, {cores} CPU cores")
    print(f"{'workers':>8} {'utt/s':>8} {'audio s/s':>10} {'wall s':>8}")
    for w, ups, aps, wall in rows:
        print(f"{w:>8} {ups:>8.1f} {aps:>10.1f} {wall:>8.1f}")
    if len(rows) > 1:
        print(f"speed-up with {cores} workers: {rows[-1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
