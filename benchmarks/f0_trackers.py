"""Pitch targets by tracker: octave errors and speed of RAPT and SWIPE' against pYIN, side by side.

    python benchmarks/f0_trackers.py --corpus work/corpus [--per-speaker 1]

For each pretraining speaker of the embedded corpus, its held-out recordings go through
the toolkit's two pretraining F0 trackers (``f0_method`` rapt and swipe, via
``extract_f0``) and through pYIN (librosa, the evaluation's tracker), in one run. A
speaker's tracker median that is more than 25 % off pYIN's counts as an octave
error (the trackers agree within a few percent otherwise). pYIN finds no voicing in
some flite voices; those speakers are compared between RAPT and SWIPE' only. The
table ends with each tracker's time per second of audio on this machine.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from tts_adapt.data.audio import F0_METHODS, AudioConfig, load_audio
from tts_adapt.evaluate.metrics import f0_track
from tts_adapt.evaluate.corpus_voices import heldout_recordings
from tts_adapt.models.features import extract_f0

OFF = 0.25  # relative distance of medians that counts as an octave error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="the embedded corpus (tts-adapt corpus build)")
    ap.add_argument("--per-speaker", type=int, default=1, help="held-out recordings per speaker")
    args = ap.parse_args()
    try:
        heldout = heldout_recordings(args.corpus)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    configs = {m: AudioConfig(f0_method=m) for m in F0_METHODS}
    sr = AudioConfig().sample_rate
    seconds = defaultdict(float)
    audio_seconds = 0.0
    medians: dict[str, dict[str, float]] = {}
    for speaker in tqdm(sorted(heldout), desc="tracking F0", unit="spk"):
        voiced = defaultdict(list)
        for path in heldout[speaker][:args.per_speaker]:
            wav = load_audio(path, sr)[0]
            audio_seconds += len(wav) / sr
            for method, config in configs.items():
                t = time.perf_counter()
                f0 = extract_f0(wav, config, config.frames(len(wav)))
                seconds[method] += time.perf_counter() - t
                voiced[method].append(f0[f0 > 0])
            t = time.perf_counter()
            f0, flags = f0_track(wav, sr)
            seconds["pyin"] += time.perf_counter() - t
            voiced["pyin"].append(f0[flags])
        medians[speaker] = {m: float(np.median(np.concatenate(v))) if sum(map(len, v)) else float("nan")
                            for m, v in voiced.items()}

    def off(a: float, b: float) -> bool:
        return abs(a - b) > OFF * b

    print(f"\n{len(medians)} pretraining speakers, {args.per_speaker} held-out recording(s) each, "
          f"{os.cpu_count()} CPU core(s)\n")
    print(f"{'speaker':<10}" + "".join(f"{m + ' (Hz)':>12}" for m in (*F0_METHODS, "pyin")))
    errors = defaultdict(list)
    for speaker, m in medians.items():
        ref = m["pyin"]
        flagged = []
        for method in F0_METHODS:
            if np.isnan(ref):  # no voicing found by pYIN: compare the two trackers only
                continue
            if off(m[method], ref):
                errors[method].append(speaker)
                flagged.append(method)
        if flagged or np.isnan(ref):
            print(f"{speaker:<10}" + "".join(f"{m[k]:>12.0f}" for k in (*F0_METHODS, "pyin"))
                  + ("   off: " + ", ".join(flagged) if flagged else "   (no pYIN voicing)"))
    compared = sum(not np.isnan(m["pyin"]) for m in medians.values())
    print(f"\n(only speakers with a disagreement or without pYIN voicing are listed; {compared} compared with pYIN)\n")
    print(f"{'tracker':<8}{'octave errors':>15}{'s per s of audio':>18}{'x pYIN speed':>14}")
    for method in (*F0_METHODS, "pyin"):
        rate = seconds[method] / audio_seconds
        n = "-" if method == "pyin" else f"{len(errors[method])}/{compared}"
        print(f"{method:<8}{n:>15}{rate:>18.4f}{seconds['pyin'] / seconds[method]:>14.1f}")


if __name__ == "__main__":
    main()
