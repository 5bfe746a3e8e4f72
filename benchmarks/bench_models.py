"""Synthesis real-time factor and pretraining throughput of a model, on this machine's CPU.

    python benchmarks/bench_models.py [--model DIR] [--corpus DIR] [--steps 20]

Synthesis: real-time factor (wall time / audio duration) of acoustic model alone
and with Griffin-Lim (and with WORLD for a FastPitch), over a few sentences (goal: <= 0.2 with
Griffin-Lim).
Pretraining: optimizer steps/s and utterances/s of the model's architecture on
batches of the corpus (skipped without --corpus). Printed as one table with the
core count, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from tts_adapt.models.synthesis import Synthesizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the harbour.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "How many wooden chairs did George carry up the crooked stairs yesterday?",
    "A gentle breeze moved the yellow curtains in the quiet kitchen.",
]


def bench_synthesis(synth: Synthesizer, repeats: int = 2) -> dict:
    speaker = synth.backend.speakers.names[0]
    synth.speak(SENTENCES[0], speaker=speaker)  # warm-up
    t_model = t_total = audio = 0.0
    for _ in range(repeats):
        for s in SENTENCES:
            t0 = time.perf_counter()
            mel, f0 = synth.backend.synthesize_mel_f0(s, speaker=speaker)
            t1 = time.perf_counter()
            wav = synth.vocode(mel, f0)
            t2 = time.perf_counter()
            t_model += t1 - t0
            t_total += t2 - t0
            audio += wav.shape[-1] / synth.sample_rate
    return {"rtf_model": t_model / audio, "rtf_total": t_total / audio, "audio_s": audio}


def bench_training(model_dir, corpus, steps: int, batch_size: int = 16) -> dict:
    from tts_adapt.data.readers import read_dataset
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.features import extract_features

    backend = TTSBackend.from_pretrained(model_dir)
    utts, _ = read_dataset(corpus, "tts_adapt", speaker_sets=["pretrain"], splits=["train"], validate_audio=False)
    utts = utts[: batch_size * steps]
    feats = extract_features(utts, os.path.expanduser("~/.cache/tts_adapt"), backend.audio, backend.text_to_ids,
                             backend.text_config, progress=False, workers=os.cpu_count() or 1)
    model = backend.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [backend.collate(feats[i:i + batch_size]) for i in range(0, len(feats) - batch_size + 1, batch_size)]
    loss, _ = backend.loss(batches[0])  # warm-up
    loss.backward()
    t0 = time.perf_counter()
    for b in batches:
        opt.zero_grad()
        loss, _ = backend.loss(b)
        loss.backward()
        opt.step()
    wall = time.perf_counter() - t0
    return {"steps_s": len(batches) / wall, "utts_s": len(batches) * batch_size / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped base model)")
    ap.add_argument("--corpus", default=None, help="embedded corpus, for the training throughput")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    synth = Synthesizer(args.model)
    s = bench_synthesis(synth)
    world = bench_synthesis(Synthesizer(synth.backend, vocoder="world")) if synth.backend.name.endswith(
        "fastpitch") else None
    print(f"CPU cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"model: {synth.backend.name} ({synth.backend.num_parameters() / 1e6:.2f} M parameters)")
    print(f"{'measure':<42} {'value':>10}")
    print(f"{'synthesis RTF, acoustic model only':<42} {s['rtf_model']:>10.3f}")
    print(f"{'synthesis RTF, with Griffin-Lim (goal <= 0.2)':<42} {s['rtf_total']:>10.3f}")
    if world is not None:
        print(f"{'synthesis RTF, with WORLD':<42} {world['rtf_total']:>10.3f}")
    if args.corpus:
        from tts_adapt.models.synthesis import default_model_dir

        t = bench_training(args.model or default_model_dir(), args.corpus, args.steps)
        print(f"{'pretraining steps/s (batch 16)':<42} {t['steps_s']:>10.2f}")
        print(f"{'pretraining utterances/s':<42} {t['utts_s']:>10.1f}")


if __name__ == "__main__":
    main()
