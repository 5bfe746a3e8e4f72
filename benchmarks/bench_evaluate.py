"""Wall time of evaluating one adapter on the default held-out sets, on this machine's CPU.

    python benchmarks/bench_evaluate.py --adapter work/adapters/lora [--cache-dir DIR]

Runs ``evaluate_adapter`` with the defaults of ``tts-adapt evaluate`` (the target's
held-out clips, 8 old speakers and 6 unseen voices with 2 utterances each) twice in
one process: cold (the base model scored too, real recordings analysed) and warm
(base-model scores cached, real recordings analysed once: what every further
adapter of a sweep costs). Goal: at most 120 s per adapter on 2 cores. Also shows
where the time goes: synthesis, MCD-DTW and pYIN per utterance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path



def per_utterance_costs(adapter: Path, repeats: int = 4) -> dict:
    from tts_adapt.evaluate.metrics import analyse, compare
    from tts_adapt.adapt.adapter import adapted_model
    from tts_adapt.models.synthesis import Synthesizer

    synth = Synthesizer(adapted_model(adapter))
    text = "The quick brown fox jumps over the lazy dog near the harbour."
    synth.speak(text)  # warm-up
    t = {"synthesis": 0.0, "mel-cepstra + DTW": 0.0, "pYIN": 0.0}
    for _ in range(repeats):
        t0 = time.perf_counter()
        wav = synth.speak(text)
        t1 = time.perf_counter()
        a = analyse(wav, synth.sample_rate, pitch=False)
        compare(a, a)
        t2 = time.perf_counter()
        analyse(wav, synth.sample_rate, pitch=True)
        t3 = time.perf_counter()
        t["synthesis"] += t1 - t0
        t["mel-cepstra + DTW"] += t2 - t1
        t["pYIN"] += (t3 - t2) - (t2 - t1) / 2  # analyse(pitch=True) repeats the mel-cepstra
    return {k: v / repeats for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, type=Path, help="adapter folder with a prepared target")
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: a fresh temporary one)")
    args = ap.parse_args()
    from tts_adapt.evaluate.adapter import evaluate_adapter
    from tts_adapt.evaluate.scoring import RealAudio
    from tts_adapt.data.speaker_encoder import SpeakerEncoder

    real, encoder = RealAudio(16000), SpeakerEncoder()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        t0 = time.perf_counter()
        report = evaluate_adapter(args.adapter, Path(tmp) / "cold", cache_dir=cache, real=real, encoder=encoder,
                                  progress=False)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate_adapter(args.adapter, Path(tmp) / "warm", cache_dir=cache, real=real, encoder=encoder,
                         progress=False)
        warm = time.perf_counter() - t0
    costs = per_utterance_costs(args.adapter)
    n = sum(report["counts"].values())
    print(f"machine: {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}")
    print(f"evaluation of {args.adapter}: {n} utterances ({report['counts']})")
    print(f"{'run':<44} {'seconds':>8} {'vs goal 120 s':>14}")
    print(f"{'cold (base model scored too)':<44} {cold:>8.1f} {cold / 120:>14.2f}")
    print(f"{'warm (base scores cached, as in a sweep)':<44} {warm:>8.1f} {warm / 120:>14.2f}")
    total = sum(costs.values())
    print(f"\nper utterance of one model ({total:.2f} s):")
    for k, v in costs.items():
        print(f"  {k:<20} {v:>6.2f} s  ({100 * v / total:.0f} %)")


if __name__ == "__main__":
    main()
