"""Audio examples of an intelligibility run, for a reader to listen to: a few sentences per text set and
voice set, the model's speech next to the voice's own recording, with what the recogniser heard.

    python benchmarks/intelligibility.py ... --wav-dir RUN_WAVS --out RUN.json     # first, keeping the audio
    python benchmarks/intelligibility_examples.py --run RUN.json --wav-dir RUN_WAVS --out docs/audio/base-model \
        [--per-set 3] [--engine flite]

The run's items are planned again from the arguments recorded in RUN.json (the plan is deterministic for
its seed), which tells which of RUN_WAVS/model/<speaker>/<n>.wav is which sentence. For each text set
(held-out corpus sentences, everyday sentences) and voice set (pretraining voices, unseen voices zero-shot)
it takes the first ``--per-set`` sentences of the synthesiser's voices (``--engine``; flite's are the
ones the recogniser hears), one per speaker while there are speakers left, and writes them as Ogg Vorbis
(a few kB per second), the model's ``<set>_<k>_model.ogg`` and the recording ``<set>_<k>_recording.ogg``,
plus ``README.md``: a table of the sentences, the links and the transcripts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import soundfile as sf

from tts_adapt.io import write_text_atomic


def load_benchmark():
    """benchmarks/intelligibility.py as a module (its plan of the items)."""
    path = Path(__file__).with_name("intelligibility.py")
    spec = importlib.util.spec_from_file_location("intelligibility_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_args(run: dict) -> argparse.Namespace:
    args = dict(run["args"])
    for key in ("corpus", "everyday", "model", "wav_dir", "out"):
        if args.get(key) not in (None, "None"):
            args[key] = Path(args[key])
    return argparse.Namespace(**args)


def words(text: str) -> list[str]:
    """The words of a sentence, as the recogniser's rows keep them (lower case, no punctuation)."""
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def choose(run: dict, items: list, engine: str, per_set: int) -> list[dict]:
    """The examples: for each (text set, voice set) of ``engine``, up to ``per_set`` items, one per speaker
    while there are speakers left, with the transcripts of the run."""
    chosen = []
    for res in run["results"]:
        if res["engine"] != engine:
            continue
        idx = [i for i, it in enumerate(items)
               if (it.text_set, it.voices, it.engine) == (res["text_set"], res["voices"], res["engine"])]
        rows = list(zip(idx, res["sources"]["model"]["utterances"], res["sources"]["recordings"]["utterances"]))
        if len(rows) != res["sources"]["model"]["utterances_count"]:
            raise SystemExit("the run's items cannot be planned again: run the benchmark and this script "
                             "with the same corpus folders")
        picked, speakers = [], set()
        for rounds in (0, 1):  # first one per speaker, then any
            for i, model_row, rec_row in rows:
                if len(picked) < per_set and (rounds or items[i].speaker not in speakers) \
                        and all(p[0] != i for p in picked):
                    picked.append((i, model_row, rec_row))
                    speakers.add(items[i].speaker)
        for k, (i, model_row, rec_row) in enumerate(picked):
            if words(model_row["reference"]) != words(items[i].text):
                raise SystemExit(f"item {i}: the run's sentence {model_row['reference']!r} is not the planned "
                                 f"{items[i].text!r}; were the corpus folders changed since the run?")
            chosen.append({"set": f"{res['text_set']}, {res['voices']} voices", "slug":
                           f"{res['text_set'].split()[0].replace('-', '')}_{res['voices']}_{k + 1}",
                           "index": i, "speaker": items[i].speaker, "text": items[i].text,
                           "recording": items[i].recording, "model_heard": model_row["hypothesis"],
                           "model_wer": model_row["wer"], "recording_heard": rec_row["hypothesis"]})
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="the JSON of benchmarks/intelligibility.py --out")
    ap.add_argument("--wav-dir", type=Path, required=True, help="its --wav-dir")
    ap.add_argument("--out", type=Path, required=True, help="folder of the examples")
    ap.add_argument("--per-set", type=int, default=3)
    ap.add_argument("--engine", default="flite", help="the voices' synthesiser (flite or espeak-ng)")
    args = ap.parse_args()

    run = json.loads(args.run.read_text(encoding="utf-8"))
    bench = load_benchmark()
    items, _ = bench.plan(run_args(run), args.wav_dir)
    examples = choose(run, items, args.engine, args.per_set)
    if not examples:
        raise SystemExit(f"{args.run}: no {args.engine} voices in the run")
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Listening examples: {Path(run['model']).name}, vocoder {run['vocoder']}", "",
             f"Made by `python benchmarks/intelligibility_examples.py --run <run>.json --wav-dir <wavs> --out "
             f"{args.out} --per-set {args.per_set} --engine {args.engine}` from a run of "
             f"`python benchmarks/intelligibility.py` ({run['args']['sentences']} sentences per voice, seed "
             f"{run['args']['seed']}). \"Heard\" is what the recogniser (PocketSphinx) transcribed.", "",
             "| set | voice | sentence | model | recording | heard from the model (WER) | heard from the recording |",
             "|---|---|---|---|---|---|---|"]
    for ex in examples:
        model_wav = args.wav_dir / "model" / ex["speaker"] / f"{ex['index']:04d}.wav"
        for path, name in ((model_wav, f"{ex['slug']}_model.ogg"), (Path(ex["recording"]), f"{ex['slug']}_recording.ogg")):
            if not path.is_file():
                raise SystemExit(f"{path}: not found; was the run made with --wav-dir {args.wav_dir}?")
            audio, sr = sf.read(str(path), dtype="float32")
            sf.write(args.out / name, audio, sr, format="OGG", subtype="VORBIS")
        lines.append(f"| {ex['set']} | {ex['speaker']} | {ex['text']} | [model]({ex['slug']}_model.ogg) | "
                     f"[recording]({ex['slug']}_recording.ogg) | {ex['model_heard']} ({ex['model_wer']:.2f}) | "
                     f"{ex['recording_heard']} |")
    write_text_atomic(args.out / "README.md", "\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in args.out.glob("*.ogg"))
    print(f"{len(examples)} examples, {2 * len(examples)} files, {total / 1e3:.0f} kB in {args.out}")


if __name__ == "__main__":
    main()
