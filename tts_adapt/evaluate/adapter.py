"""``evaluate_adapter``: report.json, report.md and mel-spectrogram images for one adapter.

See :mod:`tts_adapt.evaluate.learning` for what is measured and :mod:`tts_adapt.evaluate.measures` for each
measure. Both models and the real recordings are scored by :mod:`tts_adapt.evaluate.scoring`; the base
model's scores depend only on the base model, the utterances, the listeners and the target's d-vector,
and the recordings' only on the recordings and the listeners, so both are cached (a sweep scores them once).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tts_adapt.adapt.adapter import Adapter, AdapterFolderError
from tts_adapt.adapt.clips import read_target_clips
from tts_adapt.cache import cache_dir as default_cache_dir
from tts_adapt.data.audio import LogMel, load_audio
from tts_adapt.data.readers import read_dataset
from tts_adapt.data.target_split import find_prepared_target
from tts_adapt.evaluate.identification import VoicePrints
from tts_adapt.evaluate.learning import DEFINITIONS, SETS, select_utterances, summary_rows
from tts_adapt.evaluate.measures import MEASURES, verdict
from tts_adapt.evaluate.scoring import EvalUtterance, Listeners, RealAudio, cached_recordings, cached_scores, score_model
from tts_adapt.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.synthesis import Synthesizer, default_model_dir

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
    clips, _ = read_target_clips(Path(target_dir).resolve(), sample_rate, min_clips=1, max_clips=10 ** 6)
    return clips, prepared


def voice_print_clips(data_utts, items: list[EvalUtterance], target_clips: list[str],
                      target_speaker: str | None) -> dict[str, list[str]]:
    """Clips for each voice's print: the target's adaptation clips, and each dataset speaker's clips that are not
    evaluated (its training clips first). The target's own name in the dataset is left out: it is ``target``."""
    evaluated = {i.audio for i in items}
    clips: dict[str, list[str]] = {"target": list(target_clips)} if target_clips else {}
    # training clips first (a dataset without splits counts as training clips)
    for u in sorted(data_utts or [], key=lambda u: ("train" not in (u.split or "train"), u.audio_path)):
        if u.speaker != target_speaker and u.audio_path not in evaluated:
            clips.setdefault(u.speaker, []).append(u.audio_path)
    return clips


def evaluate_adapter(adapter: str | Path, out: str | Path | None = None, *, model: str | Path | None = None,
                     target_dir: str | Path | None = None, data: str | Path | None = None, layout: str = "auto",
                     old_speakers: int = 8, unseen_speakers: int = 6, per_speaker: int = 4, images: int = 3,
                     cache_dir: str | Path | None = None, real: RealAudio | None = None,
                     listeners: Listeners | None = None, save_wavs: bool = True, progress: bool = True,
                     device: str | None = None) -> dict:
    """Measure learning and forgetting of ``adapter`` (see the module docstrings); write the report into
    ``out`` (default: ``<adapter>/eval``): report.json, report.md, report.png, utterances.csv and mel images,
    and return it. ``real`` and ``listeners`` may be shared between calls (a sweep) to analyse each real
    recording once and load the recogniser and the naturalness predictor once. ``device`` (a ``--device``
    value; None: the CPU) is where both models synthesise."""
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

    adapted = Synthesizer(saved.apply(TTSBackend.from_pretrained(model_dir)), device=device)
    base_backend = TTSBackend.from_pretrained(model_dir)
    d_vector = saved.d_vector
    saved.speak_zero_shot(base_backend)  # a d-vector model: the base model speaks the target zero-shot
    base = Synthesizer(base_backend, device=device)
    sr = adapted.sample_rate

    heldout, prepared = _target_heldout(run, adapter, target_dir, sr)
    if data is None and prepared is not None:
        data, layout = prepared.data, prepared.layout
    # absolute paths: the cached scores of the base model and the recordings are keyed by them
    data = Path(data).resolve() if data else None
    data_utts = read_dataset(data, layout, validate_audio=False)[0] if data else None
    known = [n for n in base_backend.speakers.names if n != "target"]
    target_speaker = prepared.speaker if prepared else None
    items = select_utterances(known, data_utts, heldout, target_speaker=target_speaker,
                              old_speakers=old_speakers, unseen_speakers=unseen_speakers, per_speaker=per_speaker,
                              zero_shot=base_backend.speakers.kind == "d_vector")

    if real is None or real.sample_rate != sr:
        real = RealAudio(sr)
    listeners = listeners or Listeners.full()
    target_clips = [c.audio_path for c in read_target_clips(run["target_dir"], sr, min_clips=1, max_clips=10 ** 6)[0]] \
        if run.get("target_dir") and Path(run["target_dir"]).is_dir() else []
    voices = voice_print_clips(data_utts, items, target_clips, target_speaker)
    listeners.prints = VoicePrints.from_clips(voices, listeners.encoder, cache_dir=cache) if len(voices) > 1 else None
    recordings = cached_recordings(items, real, listeners, cache_dir=cache, progress=progress)
    base_items = items if d_vector is not None else [i for i in items if i.set != "target"]
    base_scores = cached_scores(base, base_items, real, listeners, cache_dir=cache, d_vector=d_vector, name="base",
                                wav_dir=out / "wavs" / "base" if save_wavs else None, progress=progress)
    adapted_scores = score_model(adapted, items, real, listeners, cache_dir=cache, name="adapted",
                                 wav_dir=out / "wavs" / "adapted" if save_wavs else None, progress=progress)
    rows = summary_rows(base_scores, adapted_scores, recordings)

    pictures = _mel_images(items, base, adapted, out, images) if images else []
    report = {
        "adapter": str(adapter), "model": str(model_dir), "strategy": run.get("config", {}).get("strategy"),
        "lam": run.get("config", {}).get("lam"), "target_dir": str(target_dir or prepared.heldout_dir),
        "data": str(data) if data else None,
        "counts": {s: sum(i.set == s for i in items) for s in SETS},
        "speakers": {s: sorted({i.speaker for i in items if i.set == s}) for s in ("pretrain", "unseen")},
        "voices": len(listeners.prints.names) if listeners.prints else 0,
        "listeners": listeners.describe(),
        "rows": rows, "definitions": DEFINITIONS, "images": [p.name for p in pictures] + ["report.png"],
        "vocoder": type(adapted.vocoder).__name__, "seconds": round(time.time() - t0, 1),
    }
    report_plot(report, out / "report.png")
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", to_markdown(report))
    write_csv_atomic(out / "utterances.csv", _utterance_rows(base_scores, adapted_scores, recordings),
                     ["set", "speaker", "utt_id", "metric", "real", "base", "adapted"])
    return report


def _utterance_rows(base: dict, adapted: dict, recordings: list[dict]) -> list[dict]:
    key = lambda r: (r["set"], r["speaker"], r["utt_id"])  # noqa: E731
    b_by = {key(r): r for r in base["utterances"]}
    real_by = {key(r): r for r in recordings}
    rows = []
    for r in adapted["utterances"]:
        b, real = b_by.get(key(r), {}), real_by.get(key(r), {})
        for metric in ("mcd_db", "f0_cents", "gpe", "vde", "similarity", "id_rank", "dnsmos", "mel_loss",
                       "transcript"):
            if metric in r:
                rows.append({"set": r["set"], "speaker": r["speaker"], "utt_id": r["utt_id"], "metric": metric,
                             "real": real.get(metric), "base": b.get(metric), "adapted": r[metric]})
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


def _with_interval(measure, value, interval, signed: bool = False) -> str:
    if value is None:
        return "–"
    low, high = interval
    text = measure.format(value, signed=signed)
    if low is None or high is None:
        return text
    unit = " %" if measure.percent else ""
    return f"{text.removesuffix(unit)} [{measure.format(low, signed=signed).removesuffix(unit)}, " \
           f"{measure.format(high, signed=signed).removesuffix(unit)}]{unit}"


def to_markdown(report: dict) -> str:
    lines = [f"# Evaluation of {report['adapter']}", "",
             f"Strategy {report['strategy']}, λ = {report['lam']}; base model {report['model']}; "
             f"vocoder {report['vocoder']}; {report['seconds']:.0f} s. Figures: mean over utterances "
             "[95 % bootstrap interval]; real: the real recordings of the same sentences.", "",
             "| set | measure | n | real | base | adapted | change | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        m = MEASURES[r["metric"]]
        label = f"{m.label} ({m.unit}, {'lower' if m.lower_is_better else 'higher'} is better)"
        lines.append(f"| {SET_LABELS[r['set']]} | {label} | {r['n']} | "
                     f"{_with_interval(m, r['real'], r['real_ci'])} | {_with_interval(m, r['base'], r['base_ci'])} | "
                     f"{_with_interval(m, r['adapted'], r['adapted_ci'])} | "
                     f"{_with_interval(m, r['change'], r['change_ci'], signed=True)} | "
                     f"{verdict(r['metric'], r['change'], r['change_ci']) or '–'} |")
    lines += ["", "Speakers: " + "; ".join(f"{k}: {', '.join(v) or '–'}" for k, v in report["speakers"].items()),
              f"Identification among {report.get('voices', 0)} voices.", ""]
    lines += [f"![{name}]({name})" for name in report["images"]]
    lines += ["", "Definitions:"] + [f"- {k}: {v}" for k, v in report["definitions"].items()]
    return "\n".join(lines) + "\n"


def report_plot(report: dict, path: Path) -> None:
    """One panel per measure: real recordings, base and adapted per set, each with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(r["metric"] for r in report["rows"]))
    if not metrics:
        return
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
    sources = (("real", "real recordings", "tab:gray"), ("base", "base model", "tab:red"),
               ("adapted", "adapted", "tab:blue"))
    for ax, metric in zip(axes.flat, metrics):
        m = MEASURES[metric]
        rows = [r for r in report["rows"] if r["metric"] == metric]
        scale = 100.0 if m.percent else 1.0
        for k, (key, label, colour) in enumerate(sources):
            xs, ys, lo, hi = [], [], [], []
            for x, r in enumerate(rows):
                if r[key] is None:
                    continue
                low, high = r[f"{key}_ci"]
                xs.append(x + (k - 1) * 0.25)
                ys.append(r[key] * scale)
                lo.append((r[key] - (low if low is not None else r[key])) * scale)
                hi.append(((high if high is not None else r[key]) - r[key]) * scale)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=colour, label=label, capsize=3, ms=4)
        ax.set_xticks(range(len(rows)), [r["set"] for r in rows])
        ax.set_title(f"{m.label} ({m.unit}) {'↓' if m.lower_is_better else '↑'}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{Path(report['adapter']).name}: {report['strategy']}, λ = {report['lam']} "
                 "(95 % bootstrap intervals over utterances)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
