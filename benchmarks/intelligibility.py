"""Intelligibility of a model: speech-recognition word and character error rates, next to the recogniser's floor.

    python benchmarks/intelligibility.py [--model DIR] [--corpus work/corpus] [--everyday work/corpus_diverse]
        [--speakers 8] [--unseen 6] [--sentences 10] [--vocoder griffin-lim|world] [--seed 0] [--out FILE.json]

PocketSphinx (:mod:`tts_adapt.evaluate.intelligibility`, 16 kHz, each sentence decoded on its own)
transcribes three sources of the same sentences in the same voices:

* ``recordings``: the voice's own audio, the recogniser's floor on that voice;
* ``copy synthesis``: those recordings through the model's mel features and its vocoder
  (``Synthesizer.copy_synthesis``), the floor of any acoustic model with that vocoder;
* ``model``: the model speaking the sentence, pretraining voices by name, unseen voices zero-shot
  from ``--references`` training clips of theirs.

Voices: ``--speakers`` pretraining and ``--unseen`` unseen voices of ``--corpus`` (a folder made by
``tts-adapt corpus build``, the model's pretraining corpus; the quickstart builds it into
work/corpus), taken from its two synthesisers in turn (flite, espeak-ng), evenly spaced over each one's
sorted names.
Text sets, ``--sentences`` per voice:

* ``held-out corpus``: the voice's held-out sentences of ``--corpus`` that no voice reads in
  training (the parallel sentences first), with their recordings;
* ``everyday``: sentences of ``--everyday``'s prompts.txt (a corpus built with ``--text diverse``:
  real English sentences, none from the corpus's templates) that no speaker of either corpus reads,
  drawn with ``--seed``, different ones for each voice. Their recordings are made here with the
  voice's own synthesiser settings from the corpus's speakers.json, exactly as the corpus builder
  makes its clips (written under ``--wav-dir``, or a temporary folder).

Prints one table: text set × voices (by synthesiser: flite and espeak-ng voices differ in how well
the recogniser hears them) × source → utterances, WER and CER with 95 % bootstrap
intervals over utterances, and for the model the ratio of its rates to each floor (with a paired
bootstrap interval over the same sentences); then where the time went. ``--out`` writes every row
(per-utterance transcripts included) as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tts_adapt.data.audio import save_audio
from tts_adapt.data.corpus.build import _render_one  # the builder's own clip: synthesiser, sox, loudness
from tts_adapt.data.corpus.manifest import read_manifest
from tts_adapt.data.corpus.voices import SpeakerSpec
from tts_adapt.evaluate.intelligibility import CONFIDENCE, Recogniser, error_rates
from tts_adapt.evaluate.scoring import speak_as
from tts_adapt.models.synthesis import Synthesizer, default_model_dir

SOURCES = ("recordings", "copy synthesis", "model")


@dataclasses.dataclass
class Item:
    text_set: str
    voices: str  # "pretrain" | "unseen"
    engine: str  # the voice's synthesiser: flite | espeak-ng
    speaker: str
    text: str
    recording: Path  # made on the fly for the everyday set
    references: list[str]  # zero-shot clips of an unseen voice


def spread(names: list[str], n: int) -> list[str]:
    """``n`` of ``names`` (sorted), evenly spaced."""
    names = sorted(names)
    if n >= len(names):
        return names
    return [names[int(i * len(names) / n)] for i in range(n)]


def choose_voices(engines: dict[str, str], n: int) -> list[str]:
    """``n`` voices of ``engines`` (name → synthesiser), taken from each synthesiser in turn (until one has
    none left), evenly spaced over its sorted names."""
    by_engine = defaultdict(list)
    for name, engine in engines.items():
        by_engine[engine].append(name)
    queues = [spread(names, n) for _, names in sorted(by_engine.items())]
    chosen = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return sorted(chosen)


def everyday_sentences(everyday: Path, corpus_rows: list[dict]) -> list[str]:
    prompts = everyday / "prompts.txt"
    if not prompts.is_file():
        raise SystemExit(f"{prompts} not found: build the diverse-text corpus first "
                         f"(tts-adapt corpus build --text diverse --out {everyday})")
    read = {r["text"] for r in corpus_rows} | {r["text"] for r in read_manifest(everyday)}
    return [s for s in (line.strip() for line in prompts.read_text(encoding="utf-8").splitlines())
            if s and s not in read]


def plan(args, wav_dir: Path) -> tuple[list[Item], list[tuple[SpeakerSpec, str, Path]]]:
    """The items to score, and the everyday recordings still to render ``(voice, text, wav)``."""
    rows = read_manifest(args.corpus)
    specs = json.loads((args.corpus / "speakers.json").read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(SpeakerSpec)}
    trained_texts = {r["text"] for r in rows if r["split"] == "train"}
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_speaker[r["speaker"]].append(r)
    chosen = {group: choose_voices({s: specs[s]["engine"] for s, rs in by_speaker.items()
                                    if rs[0]["speaker_set"] == group}, n)
              for group, n in (("pretrain", args.speakers), ("unseen", args.unseen))}
    everyday = everyday_sentences(args.everyday, rows)
    random.Random(args.seed).shuffle(everyday)
    needed = args.sentences * sum(len(v) for v in chosen.values())
    if len(everyday) < needed:
        raise SystemExit(f"{args.everyday / 'prompts.txt'} has {len(everyday)} unread sentences, {needed} needed")
    items, to_render, k = [], [], 0
    for voices, speakers in chosen.items():
        for s in speakers:
            refs = [str(args.corpus / r["audio"]) for r in by_speaker[s] if r["split"] == "train"][:args.references]
            refs = refs if voices == "unseen" else []
            heldout = sorted((r for r in by_speaker[s] if r["split"] == "heldout" and r["text"] not in trained_texts),
                             key=lambda r: -int(r["parallel"]))[:args.sentences]
            if len(heldout) < args.sentences:
                print(f"note: {s} has {len(heldout)} held-out sentences that no voice reads in training")
            spec = SpeakerSpec(**{f: v for f, v in specs[s].items() if f in fields})
            items += [Item("held-out corpus", voices, spec.engine, s, r["text"], args.corpus / r["audio"], refs)
                      for r in heldout]
            for j, text in enumerate(everyday[k:k + args.sentences]):
                wav = wav_dir / "recordings" / s / f"everyday_{j:03d}.wav"
                items.append(Item("everyday", voices, spec.engine, s, text, wav, refs))
                to_render.append((spec, text, wav))
            k += args.sentences
    return items, to_render


def ratio_interval(model: dict, floor: dict, key: str, seed: int, resamples: int = 1000) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``model[key] / floor[key]`` (rows of the same sentences)."""
    err, tot = ("word_errors", "words") if key == "wer" else ("char_errors", "chars")
    m = np.array([[u[err], u[tot]] for u in model["utterances"]], dtype=float)
    f = np.array([[u[err], u[tot]] for u in floor["utterances"]], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(m), size=(resamples, len(m)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (m[picks, 0].sum(1) / m[picks, 1].sum(1)) / (f[picks, 0].sum(1) / f[picks, 1].sum(1))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def print_table(results: list[dict]) -> None:
    """The table of the module docstring, one row per text set, voices and source."""
    def rate(r: dict, key: str) -> str:
        low, high = r[f"{key}_interval"]
        return f"{r[key]:.2f} [{low:.2f}, {high:.2f}]"

    def ratio(v: list[float]) -> str:
        return "—" if not np.isfinite(v[0]) else f"{v[0]:.1f}× [{v[1]:.1f}, {v[2]:.1f}]"

    head = (f"{'text set':<16} {'voices':<24} {'source':<15} {'utts':>4}  "
            f"{'WER [95 % CI]':<19} {'CER [95 % CI]':<19}  "
            + "  ".join(f"{h:<19}" for h in ("WER ÷ recordings", "CER ÷ recordings", "WER ÷ copy synth.",
                                             "CER ÷ copy synth.")))
    print(head)
    print("-" * len(head))
    for res in results:
        label = f"{res['voices']} {res['engine']} ({len(res['speakers'])})"
        for source in SOURCES:
            r = res["sources"][source]
            extra = ""
            if source == "model":
                q = res["ratios"]
                extra = "  ".join(f"{ratio(q[f'{key}_over_{floor}']):<19}"
                                  for floor in ("recordings", "copy synthesis") for key in ("wer", "cer"))
            print(f"{res['text_set']:<16} {label:<24} {source:<15} {r['utterances_count']:>4}  "
                  f"{rate(r, 'wer'):<19} {rate(r, 'cer'):<19}  {extra}".rstrip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped base model)")
    ap.add_argument("--corpus", type=Path, default=Path("work/corpus"), help="the model's pretraining corpus")
    ap.add_argument("--everyday", type=Path, default=Path("work/corpus_diverse"),
                    help="a corpus built with --text diverse: its unread prompts are the everyday sentences")
    ap.add_argument("--speakers", type=int, default=8, help="pretraining voices")
    ap.add_argument("--unseen", type=int, default=6, help="unseen voices (zero-shot)")
    ap.add_argument("--sentences", type=int, default=10, help="sentences per voice and text set")
    ap.add_argument("--references", type=int, default=5, help="reference clips of an unseen voice")
    ap.add_argument("--vocoder", choices=("griffin-lim", "world"), default="griffin-lim")
    ap.add_argument("--seed", type=int, default=0, help="everyday sentences drawn, bootstrap resamples")
    ap.add_argument("--wav-dir", type=Path, default=None, help="keep the recordings and the model's audio here")
    ap.add_argument("--out", type=Path, default=None, help="write every row as JSON")
    args = ap.parse_args()
    model = args.model or default_model_dir()

    started = time.perf_counter()
    seconds: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory(prefix="intelligibility_") as tmp:
        wav_dir = args.wav_dir or Path(tmp)
        items, to_render = plan(args, wav_dir)
        t0 = time.perf_counter()
        built = json.loads((args.corpus / "corpus.json").read_text(encoding="utf-8"))["config"]
        for spec, text, wav in tqdm(to_render, desc="everyday recordings", unit="utt"):
            _render_one(spec, text, wav, wav.with_suffix(".txt"), built["sample_rate"], built["loudness_lufs"])
        seconds["everyday recordings"] += time.perf_counter() - t0

        synth = Synthesizer(model, vocoder=args.vocoder)
        recogniser = Recogniser()
        sr = synth.sample_rate
        transcripts: dict[str, list[str]] = defaultdict(list)
        voices: dict[tuple, object] = {}
        for n, it in enumerate(tqdm(items, desc="synthesising and transcribing", unit="utt")):
            t0 = time.perf_counter()
            transcripts["recordings"].append(recogniser.transcribe_file(it.recording))
            t1 = time.perf_counter()
            copy = synth.copy_synthesis(it.recording)
            t2 = time.perf_counter()
            transcripts["copy synthesis"].append(recogniser.transcribe(copy, sr))
            t3 = time.perf_counter()
            wav = speak_as(synth, it.text, it.speaker, it.references, voices)
            t4 = time.perf_counter()
            transcripts["model"].append(recogniser.transcribe(wav, sr))
            t5 = time.perf_counter()
            seconds["recognition"] += (t1 - t0) + (t3 - t2) + (t5 - t4)
            seconds["copy synthesis"] += t2 - t1
            seconds["model synthesis"] += t4 - t3
            if args.wav_dir is not None:
                save_audio(wav_dir / "model" / it.speaker / f"{n:04d}.wav", wav, sr)

    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[(it.text_set, it.voices, it.engine)].append(i)
    results = []
    for (text_set, voice_set, engine), idx in sorted(groups.items(), key=lambda g: (g[0][0] != "held-out corpus",
                                                                                     g[0][1], g[0][2])):
        got = {}
        for source in SOURCES:
            got[source] = error_rates([items[i].text for i in idx], [transcripts[source][i] for i in idx],
                                      seed=args.seed)
            for row, i in zip(got[source]["utterances"], idx):
                row.update(speaker=items[i].speaker, transcript=transcripts[source][i])
        ratios = {f"{key}_over_{floor}": [got["model"][key] / got[floor][key] if got[floor][key] else float("inf"),
                                          *ratio_interval(got["model"], got[floor], key, args.seed)]
                  for key in ("wer", "cer") for floor in ("recordings", "copy synthesis")}
        speakers = sorted({items[i].speaker for i in idx})
        results.append({"text_set": text_set, "voices": voice_set, "engine": engine, "speakers": speakers,
                        "sources": got,
                        "ratios": ratios})
    total = time.perf_counter() - started

    print(f"\nmachine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; model {model}; "
          f"vocoder {args.vocoder}; recogniser PocketSphinx en-us at 16 kHz; "
          f"intervals {CONFIDENCE:.0%} bootstrap over utterances")
    print_table(results)
    print(f"\n{len(items)} sentences, {len(items) * len(SOURCES)} transcriptions in {total:.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": str(model), "vocoder": args.vocoder, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "seconds": total,
            "results": results}, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
