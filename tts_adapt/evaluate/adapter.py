"""``evaluate_adapter``: report.json, report.md and mel-spectrogram images for one adapter.

See :mod:`tts_adapt.evaluate.learning` for what is measured. Both models are scored by
:mod:`tts_adapt.evaluate.scoring`; the base model's scores depend only on the base model, the
utterances and the target's d-vector, so they are cached (a sweep scores the base model once).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from tts_adapt.adapt.adapter import Adapter, AdapterFolderError
from tts_adapt.adapt.clips import read_target_clips
from tts_adapt.cache import cache_dir as default_cache_dir
from tts_adapt.data.audio import LogMel, load_audio
from tts_adapt.data.readers import read_dataset
from tts_adapt.data.speaker_encoder import SpeakerEncoder
from tts_adapt.data.target_split import find_prepared_target
from tts_adapt.evaluate.learning import DEFINITIONS, LOWER_IS_BETTER, select_utterances, summary_rows
from tts_adapt.evaluate.scoring import RealAudio, cached_scores, score_model
from tts_adapt.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.synthesis import Synthesizer, default_model_dir

METRIC_LABELS = {"mcd_db": "MCD-DTW (dB)", "f0_rmse_hz": "F0 RMSE (Hz)", "voicing_error": "voicing error",
                 "similarity": "speaker similarity", "mel_loss": "mel loss (teacher-forced)"}
SET_LABELS = {"target": "target (learning)", "pretrain": "old speakers (forgetting)",
              "unseen": "unseen voices, zero-shot (forgetting)"}


class EvaluationInputError(ValueError):
    pass


def _target_heldout(run: dict, adapter: Path, target_dir, sample_rate: int):
    """(held-out clips of the target, the prepared target if known)."""
    prepared = find_prepared_target(run["target_dir"]) if run.get("target_dir") else None
    if target_dir is None:
        if prepared is None:
            raise EvaluationInputError(
                f"{adapter}: give --target-dir, a folder of held-out clips of the target speaker (wav + txt) that "
                "the adapter was not trained on (tts-adapt prepare-target writes one)")
        target_dir = prepared.heldout_dir
    if run.get("target_dir") and Path(target_dir).resolve() == Path(run["target_dir"]).resolve():
        raise EvaluationInputError(f"{target_dir}: these are the clips the adapter was trained on; "
                                   "learning must be measured on held-out clips")
    clips, _ = read_target_clips(target_dir, sample_rate, min_clips=1, max_clips=10 ** 6)
    return clips, prepared


def evaluate_adapter(adapter: str | Path, out: str | Path | None = None, *, model: str | Path | None = None,
                     target_dir: str | Path | None = None, data: str | Path | None = None, layout: str = "auto",
                     old_speakers: int = 8, unseen_speakers: int = 6, per_speaker: int = 2, images: int = 3,
                     cache_dir: str | Path | None = None, real: RealAudio | None = None, encoder=None,
                     save_wavs: bool = True, progress: bool = True) -> dict:
    """Measure learning and forgetting of ``adapter`` (see the module docstrings); write the report into
    ``out`` (default: ``<adapter>/eval``) and return it. ``real`` and ``encoder`` may be shared between
    calls (a sweep) to analyse each real recording once."""
    t0 = time.time()
    adapter = Path(adapter)
    out = Path(out) if out is not None else adapter / "eval"
    try:
        saved = Adapter.load(adapter, require_run=True)
    except AdapterFolderError as err:
        raise EvaluationInputError(str(err)) from None
    run = saved.run
    model_dir = Path(model or run.get("base_model") or default_model_dir())
    cache = default_cache_dir(cache_dir)

    adapted = Synthesizer(saved.apply(TTSBackend.from_pretrained(model_dir)))
    base_backend = TTSBackend.from_pretrained(model_dir)
    d_vector = saved.d_vector
    saved.speak_zero_shot(base_backend)  # a d-vector model: the base model speaks the target zero-shot
    base = Synthesizer(base_backend)
    sr = adapted.sample_rate

    heldout, prepared = _target_heldout(run, adapter, target_dir, sr)
    if data is None and prepared is not None:
        data, layout = prepared.data, prepared.layout
    data_utts = read_dataset(data, layout, validate_audio=False)[0] if data else None
    known = [n for n in base_backend.speakers.names if n != "target"]
    items = select_utterances(known, data_utts, heldout, target_speaker=prepared.speaker if prepared else None,
                              old_speakers=old_speakers, unseen_speakers=unseen_speakers, per_speaker=per_speaker,
                              zero_shot=base_backend.speakers.kind == "d_vector")

    if real is None or real.sample_rate != sr:
        real = RealAudio(sr)
    encoder = encoder or SpeakerEncoder()
    base_items = items if d_vector is not None else [i for i in items if i.set != "target"]
    base_scores = cached_scores(base, base_items, real, encoder, cache_dir=cache, d_vector=d_vector, name="base",
                                wav_dir=out / "wavs" / "base" if save_wavs else None, progress=progress)
    adapted_scores = score_model(adapted, items, real, encoder, cache_dir=cache, name="adapted",
                                 wav_dir=out / "wavs" / "adapted" if save_wavs else None, progress=progress)
    rows = summary_rows(base_scores, adapted_scores)

    pictures = _mel_images(items, base, adapted, out, images) if images else []
    report = {
        "adapter": str(adapter), "model": str(model_dir), "strategy": run.get("config", {}).get("strategy"),
        "lam": run.get("config", {}).get("lam"), "target_dir": str(target_dir or prepared.heldout_dir),
        "data": str(data) if data else None,
        "counts": {s: sum(i.set == s for i in items) for s in ("target", "pretrain", "unseen")},
        "speakers": {s: sorted({i.speaker for i in items if i.set == s}) for s in ("pretrain", "unseen")},
        "rows": rows, "definitions": DEFINITIONS, "images": [p.name for p in pictures],
        "vocoder": type(adapted.vocoder).__name__, "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", to_markdown(report))
    write_csv_atomic(out / "utterances.csv", _utterance_rows(base_scores, adapted_scores),
                     ["set", "speaker", "utt_id", "metric", "base", "adapted"])
    return report


def _utterance_rows(base: dict, adapted: dict) -> list[dict]:
    b_by = {(r["set"], r["speaker"], r["utt_id"]): r for r in base["utterances"]}
    rows = []
    for r in adapted["utterances"]:
        b = b_by.get((r["set"], r["speaker"], r["utt_id"]), {})
        for metric in ("mcd_db", "f0_rmse_hz", "voicing_error"):
            rows.append({"set": r["set"], "speaker": r["speaker"], "utt_id": r["utt_id"], "metric": metric,
                         "base": b.get(metric), "adapted": r[metric]})
    return rows


def _mel_images(items, base, adapted, out: Path, count: int) -> list[Path]:
    """Real / base / adapted log-mel spectrograms of the first target utterances and one old speaker's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [i for i in items if i.set == "target"][:max(1, count - 1)]
    chosen += [i for i in items if i.set == "pretrain"][:count - len(chosen)]
    logmel = LogMel(adapted.backend.audio)
    paths = []
    for it in chosen:
        wav, _ = load_audio(it.audio, adapted.sample_rate)
        panels = [("real recording", logmel(torch.as_tensor(wav)).numpy())]
        for name, synth in (("base model", base), ("adapted", adapted)):
            if it.set == "target" and "target" not in synth.backend.speakers.names:
                continue
            spoken = synth.speak(it.text, speaker=it.speaker)  # the mel of the waveform, for every backend
            panels.append((name, logmel(torch.as_tensor(spoken)).numpy()))
        lo = min(p.min() for _, p in panels)
        hi = max(p.max() for _, p in panels)
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), sharex=False)
        for ax, (title, mel) in zip(np.atleast_1d(axes), panels):
            ax.imshow(mel, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
            ax.set_title(f"{title}", fontsize=9)
            ax.set_ylabel("mel bin")
        np.atleast_1d(axes)[-1].set_xlabel("frame")
        who = "target" if it.set == "target" else f"old speaker {it.speaker}"
        fig.suptitle(f"{who}: \u201c{it.text[:70]}\u201d", fontsize=9)
        fig.tight_layout()
        path = out / f"mel_{it.set}_{it.utt_id}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if metric in ("similarity", "voicing_error", "mel_loss") else f"{value:.2f}"


def to_markdown(report: dict) -> str:
    lines = [f"# Evaluation of {report['adapter']}", "",
             f"Strategy {report['strategy']}, λ = {report['lam']}; base model {report['model']}; "
             f"vocoder {report['vocoder']}; {report['seconds']:.0f} s.", "",
             "| set | metric | n | base | adapted | change (± s.e.) | better |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        change = "–" if r["change"] is None else f"{r['change']:+.3f}" + (
            f" ± {r['change_se']:.3f}" if r["change_se"] is not None and not math.isnan(r["change_se"]) else "")
        better = "lower" if LOWER_IS_BETTER[r["metric"]] else "higher"
        lines.append(f"| {SET_LABELS[r['set']]} | {METRIC_LABELS[r['metric']]} | {r['n']} | "
                     f"{_fmt(r['base'], r['metric'])} | {_fmt(r['adapted'], r['metric'])} | {change} | {better} |")
    lines += ["", "Speakers: " + "; ".join(f"{k}: {', '.join(v) or '–'}" for k, v in report["speakers"].items()), ""]
    lines += [f"![{name}]({name})" for name in report["images"]]
    lines += ["", "Definitions:"] + [f"- {k}: {v}" for k, v in report["definitions"].items()]
    return "\n".join(lines) + "\n"
