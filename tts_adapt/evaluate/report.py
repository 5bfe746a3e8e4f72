"""Reports: a model's voices scored on the embedded corpus, as JSON and Markdown."""

from __future__ import annotations

import time
from pathlib import Path

from tts_adapt.io import write_csv_atomic, write_json_atomic, write_text_atomic

METRIC_DEFINITIONS = {
    "mcd_db": "mel-cepstral distortion (dB), order-24 mel-cepstra (pysptk mcep), c0 excluded, silence trimmed, "
              "DTW-aligned (librosa), mean over held-out utterances",
    "same_similarity": "cosine of resemblyzer embeddings: synthesised audio vs the same speaker's real held-out audio",
    "best_other_similarity": "highest cosine between the synthesised audio and any other speaker's real audio",
    "recognisable_share": "share of speakers whose same-speaker similarity exceeds the best other-speaker similarity",
}


def evaluate_base_model(model: str | Path | None, corpus: str | Path, out: str | Path, *, per_speaker: int = 3,
                        speaker_sets: tuple[str, ...] = ("pretrain", "unseen"), max_speakers: int | None = None,
                        progress: bool = True, vocoder: str | Path | None = None, device: str | None = None) -> dict:
    """Score the model's voices (see :mod:`tts_adapt.evaluate.corpus_voices`) through ``vocoder`` (see
    :func:`tts_adapt.models.vocoder.make_vocoder`; Griffin-Lim by default) on ``device`` (a ``--device``
    value; None: the CPU); writes report.json, report.md and speakers.csv into ``out`` and returns the report."""
    from tts_adapt.evaluate.corpus_voices import evaluate_voices, scores_to_rows, summarise
    from tts_adapt.models.synthesis import Synthesizer

    out = Path(out)
    t0 = time.time()
    synth = Synthesizer(model, vocoder=vocoder, device=device)
    scores = evaluate_voices(synth, corpus, speaker_sets, per_speaker, max_speakers=max_speakers,
                             progress=progress, wav_dir=out / "wavs")
    summary = summarise(scores)
    report = {
        "model": str(model or "shipped base model"),
        "model_info": synth.backend.info,
        "corpus": str(corpus),
        "per_speaker": per_speaker,
        "vocoder": type(synth.vocoder).__name__,
        "summary": summary,
        "definitions": METRIC_DEFINITIONS,
        "seconds": round(time.time() - t0, 1),
    }
    report["markdown"] = to_markdown(report)
    write_csv_atomic(out / "speakers.csv", scores_to_rows(scores))
    write_json_atomic(out / "report.json", {k: v for k, v in report.items() if k != "markdown"})
    write_text_atomic(out / "report.md", report["markdown"])
    return report


def to_markdown(report: dict) -> str:
    lines = ["| speakers | how | n | MCD-DTW (dB) | same-speaker sim. | best other sim. | recognisable |",
             "|---|---|---|---|---|---|---|"]
    for group, s in report["summary"].items():
        mcd = "–" if s["mcd_db"] is None else f"{s['mcd_db']:.2f}"
        lines.append(f"| {group} | {s['mode']} | {s['speakers']} | {mcd} | {s['same_similarity']:.3f} | "
                     f"{s['best_other_similarity']:.3f} | {s['recognisable']}/{s['speakers']} "
                     f"({100 * s['recognisable_share']:.0f} %) |")
    lines.append("")
    note = f"{report['per_speaker']} held-out utterances per speaker, vocoder: {report['vocoder']}."
    modes = {s["mode"] for s in report["summary"].values()}
    if "real recordings" in modes:
        note += (" Rows marked real recordings score the speakers' own recordings of other sentences in place "
                 "of synthesised audio: the ceiling of the measure on this corpus.")
    if "vocoded recordings" in modes:
        note += (" Rows marked vocoded recordings score the held-out recordings turned into mel features and "
                 "back by the same vocoder (copy synthesis): the ceiling of any acoustic model with it.")
    lines.append(note)
    lines += ["", "Definitions:"] + [f"- {k}: {v}" for k, v in report["definitions"].items()]
    return "\n".join(lines) + "\n"
