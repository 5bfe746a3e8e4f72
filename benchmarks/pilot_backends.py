"""Pilot: which backend learns fastest on this machine? Equal CPU time, one common measure.

    python benchmarks/pilot_backends.py --corpus work/corpus [--minutes 20] [--out work/pilot]
        [--candidates fastpitch:small,glowtts:small]

Each candidate is pretrained from scratch on the corpus's pretraining speakers with
the settings of configs/demo_pretrain.yaml (backend and size replaced), all
candidates at once, one process and one CPU core each, for the same wall time
(``tts-adapt pretrain --max-minutes``). Then each is scored the same way: held-out
sentences of trained speakers, synthesised with Griffin-Lim and compared with the
real recordings (MCD-DTW, and speaker similarity against every other speaker: the
voice is recognisable when its own speaker is the closest). Losses of different
architectures are not comparable; these measures are. Re-running continues each
candidate for another ``--minutes`` (the runs are resumable).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tts_adapt.io import write_json_atomic, write_text_atomic


def train(candidates: list[tuple[str, str]], corpus: Path, out: Path, minutes: float, config: Path,
          cache_dir: Path | None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for backend, size in candidates:
        cmd = [sys.executable, "-m", "tts_adapt.cli", "pretrain", "--data", str(corpus),
               "--out", str(out / f"{backend}-{size}"), "--config", str(config), "--backend", backend,
               "--size", size, "--max-minutes", str(minutes), "--checkpoint-every", "100", "--workers", "1", "-q"]
        if cache_dir:
            cmd += ["--cache-dir", str(cache_dir)]
        log = open(out / f"{backend}-{size}.log", "a")
        procs.append((backend, size, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
    for backend, size, p in procs:
        if p.wait():
            raise SystemExit(f"pretraining {backend}-{size} failed; see {out / f'{backend}-{size}.log'}")


def score(folder: Path, corpus: Path, speakers: int, per_speaker: int) -> dict:
    from tts_adapt.evaluate.corpus_voices import evaluate_voices, summarise
    from tts_adapt.models.synthesis import Synthesizer

    synth = Synthesizer(folder)
    scores = evaluate_voices(synth, corpus, ("pretrain",), per_speaker, max_speakers=speakers, progress=False)
    s = summarise(scores)["pretrain"]
    info = synth.backend.info
    return {"params_m": synth.backend.num_parameters() / 1e6, "steps": info.get("steps"),
            "wall_s": info.get("wall_seconds"), **s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("work/pilot"))
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall time per candidate and sitting")
    ap.add_argument("--candidates", default="fastpitch:small,glowtts:small", help="backend:size, comma-separated")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/demo_pretrain.yaml")
    ap.add_argument("--speakers", type=int, default=12, help="trained speakers to score")
    ap.add_argument("--per-speaker", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--score-only", action="store_true", help="score the existing runs without training")
    args = ap.parse_args()
    candidates = [tuple(c.split(":")) for c in args.candidates.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not args.score_only:
        train(candidates, args.corpus, args.out, args.minutes, args.config, args.cache_dir)
    rows = [(f"{b}-{s}", score(args.out / f"{b}-{s}", args.corpus, args.speakers, args.per_speaker))
            for b, s in candidates]
    table = pilot_table(rows, args)
    print(f"machine: {os.cpu_count()} cores; {time.time() - t0:.0f} s in all")
    print(table)
    write_json_atomic(args.out / "pilot.json", {"minutes": args.minutes, "cores": os.cpu_count(),
                                                "candidates": dict(rows)})
    write_text_atomic(args.out / "pilot.md", table)
    print(f"table written to {args.out / 'pilot.md'} (copy it into a model folder for its card)")


def pilot_table(rows: list[tuple[str, dict]], args) -> str:
    minutes = max(r["wall_s"] for _, r in rows) / 60
    sittings = round(minutes / args.minutes)
    lines = [f"Pilot on {os.cpu_count()} CPU cores: each candidate pretrained from scratch, all at once, on one core "
             f"each, for about {minutes:.0f} min of training with configs/demo_pretrain.yaml "
             f"(`python benchmarks/pilot_backends.py --corpus work/corpus --minutes {args.minutes:g}`, run "
             f"{sittings} time(s): each run continues the candidates), then scored on {args.per_speaker} held-out "
             f"sentences of each of {args.speakers} trained speakers.", "",
             "| candidate | parameters (M) | steps | train s | steps/s | MCD-DTW (dB) | same-speaker sim. | "
             "recognisable |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['params_m']:.2f} | {r['steps']} | {r['wall_s']:.0f} | "
                     f"{r['steps'] / r['wall_s']:.2f} | {r['mcd_db']:.2f} | {r['same_similarity']:.3f} | "
                     f"{r['recognisable']}/{r['speakers']} |")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
