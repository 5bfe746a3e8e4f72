"""How many mel bands Griffin-Lim needs to keep a voice voiced: copy synthesis by band count.

    python benchmarks/mel_bands.py --corpus work/corpus [--bands 80 128] [--per-speaker 1]

Each pretraining speaker's held-out recordings go through the toolkit's log-mel
(16 kHz, 0-8 kHz, n bands) and back through its Griffin-Lim vocoder, for each
band count, side by side in one run. pYIN (the evaluation's F0 tracker) then
counts voiced frames in the recording and in each copy. Speakers are grouped by
the median F0 of their recordings: a low voice's harmonics lie closer together
than coarse mel bands can resolve, and Griffin-Lim then makes it whisper. A
model trained on such features cannot speak those voices voiced either.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np
import torch
from tqdm.auto import tqdm

from tts_adapt.data.audio import AudioConfig, LogMel, load_audio
from tts_adapt.evaluate.metrics import f0_track
from tts_adapt.evaluate.corpus_voices import heldout_recordings
from tts_adapt.models.vocoder import GriffinLimVocoder

GROUPS = ((0.0, 110.0), (110.0, 180.0), (180.0, 1000.0))  # median F0 of the speaker's recordings, Hz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="the embedded corpus (tts-adapt corpus build)")
    ap.add_argument("--bands", type=int, nargs="+", default=[80, 128], help="mel band counts to compare")
    ap.add_argument("--per-speaker", type=int, default=1, help="held-out recordings per speaker")
    args = ap.parse_args()
    try:
        heldout = heldout_recordings(args.corpus)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    sr = AudioConfig().sample_rate
    chains = {b: (LogMel(AudioConfig(n_mels=b)), GriffinLimVocoder(AudioConfig(n_mels=b))) for b in args.bands}

    def voiced(wav: np.ndarray) -> float:
        return float(np.mean(f0_track(wav, sr)[1]))

    rows = []  # (speaker, median F0, voiced share of the recording, {bands: voiced share of the copy})
    for speaker in tqdm(sorted(heldout), desc="copy synthesis", unit="spk"):
        f0s, real, copies = [], [], defaultdict(list)
        for path in heldout[speaker][:args.per_speaker]:
            wav = load_audio(path, sr)[0]
            f0, flags = f0_track(wav, sr)
            f0s.append(f0[flags])
            real.append(float(np.mean(flags)))
            for b, (log_mel, vocoder) in chains.items():
                copies[b].append(voiced(vocoder(log_mel(torch.from_numpy(wav))).numpy()))
        median = float(np.median(np.concatenate(f0s))) if any(len(f) for f in f0s) else 0.0
        rows.append((speaker, median, float(np.mean(real)), {b: float(np.mean(v)) for b, v in copies.items()}))

    print(f"\nvoiced share of frames (pYIN), recordings vs Griffin-Lim copy synthesis; {os.cpu_count()} cores")
    head = f"{'speakers (median F0)':<24}{'n':>4}{'recordings':>12}" + "".join(f"{f'{b} bands':>12}" for b in args.bands)
    print(head + "\n" + "-" * len(head))
    for lo, hi in GROUPS:
        group = [r for r in rows if lo <= r[1] < hi]
        if not group:
            continue
        label = f"{lo:.0f}-{hi:.0f} Hz" if hi < 1000 else f">= {lo:.0f} Hz"
        print(f"{label:<24}{len(group):>4}{np.mean([r[2] for r in group]):>12.2f}"
              + "".join(f"{np.mean([r[3][b] for r in group]):>12.2f}" for b in args.bands))
    low = sorted(rows, key=lambda r: r[1])[:5]
    print("\nlowest voices: " + "; ".join(
        f"{r[0]} {r[1]:.0f} Hz: {r[2]:.2f} -> " + ", ".join(f"{r[3][b]:.2f}" for b in args.bands) for r in low))


if __name__ == "__main__":
    main()
