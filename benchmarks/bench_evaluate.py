"""Wall time of evaluating one adapter, with every measure and with the spectral measures alone, side by side.

    python benchmarks/bench_evaluate.py --adapter work/adapters/lora [--per-speaker 4] [--cache-dir DIR]

Runs ``evaluate_adapter`` three times in one process on the same utterances (the target's held-out
clips, 8 old speakers and 6 unseen voices with ``--per-speaker`` utterances each):

1. **spectral only, warm**: MCD-DTW, pitch (RAPT) and speaker similarity, the measures the evaluation
   had before intelligibility, naturalness and identification were added (base-model scores cached);
2. **all measures, cold**: every listener (speech recogniser, DNSMOS, voice prints), the base model and
   the real recordings scored too;
3. **all measures, warm**: base-model and recording scores cached: what every further adapter of a
   sweep costs.

The evaluation before these measures also tracked F0 with pYIN (50–600 Hz) on both signals of every
utterance; its cost is measured here on the same utterances and added to (1) to give the earlier
evaluation's time. Prints the ratios, then where the time of one utterance goes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def per_utterance_costs(adapter: Path, repeats: int = 3) -> dict:
    from tts_adapt.adapt.adapter import adapted_model
    from tts_adapt.evaluate.metrics import analyse, compare, rapt_f0
    from tts_adapt.evaluate.scoring import Listeners
    from tts_adapt.models.synthesis import Synthesizer

    synth = Synthesizer(adapted_model(adapter))
    listeners = Listeners.full()
    sr = synth.sample_rate
    text = "The quick brown fox jumps over the lazy dog near the harbour."
    wav = synth.speak(text)  # warm-up of every part
    listeners.recogniser.transcribe(wav, sr), listeners.naturalness.score(wav, sr)
    parts = {"synthesis": lambda: synth.speak(text),
             "mel-cepstra + DTW": lambda: compare(analyse(wav, sr, pitch=False), analyse(wav, sr, pitch=False)),
             "RAPT pitch (both signals)": lambda: [rapt_f0(wav, sr) for _ in range(2)],
             "pYIN pitch (both signals, before)": lambda: [pyin(wav, sr) for _ in range(2)],
             "speaker embedding": lambda: listeners.encoder.embed_utterance(wav, sr),
             "speech recognition": lambda: listeners.recogniser.transcribe(wav, sr),
             "DNSMOS": lambda: listeners.naturalness.score(wav, sr)}
    out = {}
    for name, fn in parts.items():
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - t0) / repeats
    return out


def pyin(wav: np.ndarray, sample_rate: int):
    import librosa

    return librosa.pyin(wav, fmin=50.0, fmax=600.0, sr=sample_rate, frame_length=1024, hop_length=256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, type=Path, help="adapter folder with a prepared target")
    ap.add_argument("--per-speaker", type=int, default=4, help="held-out utterances per old / unseen speaker")
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: a fresh temporary one)")
    args = ap.parse_args()
    from tts_adapt.evaluate.adapter import evaluate_adapter
    from tts_adapt.evaluate.scoring import Listeners, RealAudio

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        runs = {}

        def timed(name: str, listeners, real):
            t0 = time.perf_counter()
            report = evaluate_adapter(args.adapter, Path(tmp) / name, cache_dir=cache, real=real, listeners=listeners,
                                      per_speaker=args.per_speaker, progress=False, images=0, save_wavs=False)
            runs[name] = time.perf_counter() - t0
            return report

        spectral = Listeners(Listeners.full().encoder, None, None)
        spectral_real = RealAudio(16000)
        timed("spectral, cold", spectral, spectral_real)  # fills the base-score cache of the spectral listeners
        report = timed("spectral only, warm", spectral, spectral_real)
        real = RealAudio(16000)
        timed("all measures, cold", Listeners.full(), real)
        timed("all measures, warm", Listeners.full(), real)
    costs = per_utterance_costs(args.adapter)
    n = sum(report["counts"].values())
    before = runs["spectral only, warm"] + n * (costs["pYIN pitch (both signals, before)"]
                                                - costs["RAPT pitch (both signals)"])
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"evaluation of {args.adapter}: {n} utterances ({report['counts']})")
    print(f"{'run':<52} {'seconds':>8} {'÷ before':>9}")
    print(f"{'before (spectral only with pYIN, warm; reconstructed)':<52} {before:>8.1f} {1.0:>9.2f}")
    for name in ("spectral only, warm", "all measures, cold", "all measures, warm"):
        print(f"{name:<52} {runs[name]:>8.1f} {runs[name] / before:>9.2f}")
    total = sum(v for k, v in costs.items() if "before" not in k)
    print(f"\nper utterance of one model ({total:.2f} s with every measure):")
    for k, v in costs.items():
        print(f"  {k:<36} {v:>6.2f} s" + ("" if "before" in k else f"  ({100 * v / total:.0f} %)"))


if __name__ == "__main__":
    main()
