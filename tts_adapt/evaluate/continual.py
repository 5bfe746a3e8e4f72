"""The continual many-voice benchmark (``tts-adapt sweep --sequence SPK1,SPK2,SPK3``): clone several voices one
after another with each method in its continual form, and measure after every stage the new voice, every
voice cloned before it, the old pretraining voices and unseen voices (docs/continual.md).

Methods: every strategy of the sweep continued from one adapter (stage i starts from stage i − 1's adapter,
:mod:`tts_adapt.adapt.continual`, with the strategy's own penalty, replay or gates), and ``isolation``: one
plain-LoRA adapter per voice trained from the base model, the voices so far combined at each stage by exact task
arithmetic (:func:`tts_adapt.adapt.bank.merge_adapters`, ``cat``, weight 1 each: ΔW = Σ_j ΔW_j).

Layout of a sweep folder with a sequence: the layout of ``sweep --target-speaker SPK1,SPK2,...``
(:func:`tts_adapt.evaluate.sweep.run_sweep`), so that one folder holds both, and every first stage and every
isolated voice adapter *is* a cell of that sweep (same clips, same settings), adapted and evaluated once::

    <spk>/target/                       each voice's adaptation and held-out clips (prepared once)
    <spk>/cells/<cell>[-seed<k>]/adapter/   the sweep's cells: a strategy's first stage (on the first voice) and
                                        isolation's voice adapters (plain LoRA on each voice), eval/ in each
    curvature/                          the curvature files the strategies need (fitted once)
    sequence/<method>[-seed<k>]/
      stage<i>-<spk>/adapter/           the model after stage i > 1 (isolation: the merged adapter), eval/ holds
                                        the new voice's report (isolation: views/<spk>/eval/)
      stage<i>-<spk>/views/<spk_j>/     voice j spoken by stage i's model: stage i's LoRA weights with voice
                                        j's own conditioning; eval/ holds its report
    stages.csv                          one line per method, seed, stage and voice measured
    sequence.csv, sequence.md, sequence.json, sequence.png   one line per method: mean over seeds ± s.e.

Measuring voice j with stage i's model uses voice j's conditioning (the ``target_speaker.safetensors`` of its
own adapter: the continual stage j's, or isolation's voice adapter) with stage i's LoRA weights. The new voice's
evaluation includes the old pretraining voices and unseen voices; an earlier voice's only its held-out clips.

Every stage is cached like a sweep cell: a finished adapter with the same settings (and, continued, started
from the same weights) is kept, an interrupted one resumes, a report newer than its view is reused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.adapter import RUN_FILE, TARGET_FILE, Adapter
from tts_adapt.adapt.continual import WEIGHTS_FILE, adapter_fingerprint
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.train import CHECKPOINT_DIR, file_fingerprint
from tts_adapt.evaluate.sweep import (
    STRATEGY_LABELS,
    _get,
    adapt_cell,
    cell_folder,
    cell_lock,
    cell_name,
    curvature_for,
    ensure_curvatures,
    evaluated,
    outside_noise,
    paired_difference,
)
from tts_adapt.evaluate.sweep_config import SweepConfig
from tts_adapt.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic

ISOLATION = "isolation"
PUBLISHED = ("sequence.csv", "sequence.md", "sequence.json", "sequence.png", "stages.csv")
LABELS = {**STRATEGY_LABELS, ISOLATION: "isolation + task arithmetic (one LoRA per voice, summed)",
          "lalora": "LaLoRA", "selective": "selective LoRA"}
#: The figures of one evaluation (a voice measured after a stage): (column, set, measure, figure of the report).
VOICE_FIGURES = (("target_mcd", "target", "mcd_db", "adapted"), ("target_similarity", "target", "similarity", "adapted"),
                 ("target_mel_loss", "target", "mel_loss", "adapted"), ("target_wer", "target", "wer", "adapted"),
                 ("target_id", "target", "id_top1", "adapted"))
#: Figures of the pretraining and unseen voices, from the new voice's evaluation at each stage.
FORGETTING_FIGURES = (("old_dmcd", "pretrain", "mcd_db", "change"), ("old_dsimilarity", "pretrain", "similarity", "change"),
                      ("old_dwer", "pretrain", "wer", "change"), ("unseen_dmcd", "unseen", "mcd_db", "change"))
#: The measures of a method (one line per method), whether lower is better, and their labels.
MEASURES = (("learning_mcd", True, "learning: new voice's MCD (dB) ↓"),
            ("learning_similarity", False, "learning: new voice's similarity ↑"),
            ("learning_id", False, "learning: new voice's clips identified as it among all voices ↑"),
            ("learning_wer", True, "learning: new voice's word error rate ↓"),
            ("bwt_mcd", True, "backward transfer: earlier voices' MCD change (dB) ↓"),
            ("bwt_similarity", False, "backward transfer: earlier voices' similarity change ↑"),
            ("bwt_id", False, "backward transfer: earlier voices' identification change ↑"),
            ("old_dmcd_final", True, "old voices' ΔMCD at the end (dB) ↓"),
            ("unseen_dmcd_final", True, "unseen voices' ΔMCD at the end (dB) ↓"))


SHORT = {"learning_mcd": "learning MCD", "learning_similarity": "learning similarity", "learning_id": "learning ID",
         "learning_wer": "learning WER", "bwt_mcd": "BWT MCD", "bwt_similarity": "BWT similarity", "bwt_id": "BWT ID",
         "old_dmcd_final": "old ΔMCD", "unseen_dmcd_final": "unseen ΔMCD"}


class SequenceError(ValueError):
    """A sequence that cannot be run: too short, repeated or unknown voices, or a model that cannot keep voices."""


# ---------------------------------------------------------------------------- the sequence and its folders
def parse_sequence(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"A,B,C"`` as ``("A", "B", "C")``; fewer than two voices or a repeated one is a :class:`SequenceError`."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip()]
    if len(names) < 2:
        raise SequenceError(f"--sequence {','.join(names) or repr(text)}: give at least two voices to clone one after "
                            "another (comma-separated); one voice is what tts-adapt sweep measures without --sequence")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SequenceError(f"--sequence names {', '.join(repeated)} more than once; give each voice once")
    return tuple(names)


def check_voices(sequence: tuple[str, ...], speakers: list[str], known) -> None:
    """Refuse voices that are not speakers of the dataset (naming the ones that can be cloned) or that the model
    already knows (``known(name)``: a pretraining voice, whose forgetting the benchmark measures)."""
    candidates = sorted(s for s in speakers if not known(s))
    shown = ", ".join(candidates[:20]) + (" ..." if len(candidates) > 20 else "") or "none"
    for name in sequence:
        if name not in speakers:
            raise SequenceError(f"{name!r} is not a speaker of the dataset; voices that can be cloned (speakers the "
                                f"model does not know): {shown}")
        if known(name):
            raise SequenceError(f"{name!r} is a pretraining voice of the model, whose forgetting is measured; clone "
                                f"voices it does not know: {shown}")


def method_folder(out: Path, method: str, seed: int, config: SweepConfig) -> Path:
    """``sequence/<method>`` for the sweep's seed (``config.seed``), ``sequence/<method>-seed<k>`` for any other
    (as :func:`tts_adapt.evaluate.sweep.cell_folder` names cells)."""
    return out / "sequence" / (method if seed == config.seed else f"{method}-seed{seed}")


def stage_folder(method_dir: Path, stage: int, voice: str) -> Path:
    return method_dir / f"stage{stage}-{voice}"


def method_lam(method: str, lam: float | None) -> float:
    """λ of a continual strategy: ``lam`` when given, else the strategy's default; 0 for one without λ."""
    if method == ISOLATION:
        return 0.0
    cls = get_strategy(method)
    return float(lam if lam is not None else cls.default_lam) if cls.uses_lam else 0.0


# ---------------------------------------------------------------------------- views and merges
def make_view(weights: Path, conditioning: Path, clips_dir: Path, view: Path) -> Path:
    """``view``: an adapter folder with the LoRA weights (and peft config) of ``weights``, the conditioning of
    ``conditioning`` (another adapter folder: its voice) and a run record naming that voice's clips; kept as it
    is when it already views the same files, else written anew (in a hidden sibling, renamed into place)."""
    record = {"weights": str(weights), "weights_fingerprint": adapter_fingerprint(weights),
              "conditioning": str(conditioning),
              "conditioning_fingerprint": file_fingerprint(conditioning / TARGET_FILE), "target_dir": str(clips_dir)}
    run_path = view / RUN_FILE
    if run_path.is_file():
        try:
            if json.loads(run_path.read_text(encoding="utf-8")).get("view") == record:
                return view
        except ValueError:
            pass
    run = json.loads((weights / RUN_FILE).read_text(encoding="utf-8"))
    run.update(target_dir=str(clips_dir), view=record)
    run.pop("curve", None)  # the stage's learning curve stays with the stage's adapter
    tmp = view.parent / f".view-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name in ("adapter_config.json", WEIGHTS_FILE):
            shutil.copyfile(weights / name, tmp / name)
        shutil.copyfile(conditioning / TARGET_FILE, tmp / TARGET_FILE)
        write_json_atomic(tmp / RUN_FILE, run)
        if view.exists():
            shutil.rmtree(view)
        os.rename(tmp, view)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return view


def ensure_merged(voices: list[Path], out: Path, model_dir: Path) -> dict:
    """The isolation stage's adapter: ``voices`` (adapter folders, each named by its voice) combined by exact task
    arithmetic with weight 1 each (ΔW = Σ_j ΔW_j). Kept when ``out`` already merges the same folders and is
    newer than each of them."""
    from tts_adapt.adapt.bank import merge_adapters

    run_path = out / RUN_FILE
    if run_path.is_file():
        run = json.loads(run_path.read_text(encoding="utf-8"))
        merged = [v.get("path") for v in (run.get("merge") or {}).get("voices", [])]
        if merged == [str(v) for v in voices] and all(
                run_path.stat().st_mtime >= (v / RUN_FILE).stat().st_mtime for v in voices):
            return run
    if out.exists():
        shutil.rmtree(out)
    return merge_adapters([(Adapter.load(v), 1.0) for v in voices], out, combination="cat", model=model_dir)


def evaluate_view(view: Path, heldout: Path, model_dir: Path, data, *, layout: str, full: bool,
                  config: SweepConfig, cache_dir, real, listeners, progress: bool, device) -> dict:
    """The view's report (``view/eval/report.json``), reused when newer than the view; ``full``: with the old
    pretraining voices and unseen voices, else the voice's held-out clips only."""
    return evaluated(view, heldout, model_dir, data, config, layout=layout, cache_dir=cache_dir, real=real,
                     listeners=listeners, progress=progress, device=device, full=full, images=1 if full else 0)


# ---------------------------------------------------------------------------- the run
def run_sequence(out: str | Path, config: SweepConfig | None, sequence, *, lam: float | None = None,
                 model: str | Path | None = None, data: str | Path | None = None, layout: str = "auto",
                 curvature_data: str | Path | None = None, replay_data: str | Path | None = None,
                 cache_dir: str | Path | None = None, publish: str | Path | None = None, progress: bool = True,
                 echo=print, device: str | None = "auto", precision: str = "fp32") -> dict:
    """Clone the voices of ``sequence`` (speakers of ``data``) one after another with every strategy of ``config``
    in its continual form and with isolation; evaluate every voice after every stage; write stages.csv,
    sequence.csv / .md / .json / .png into ``out`` (and copies into ``publish``) and return the summary.

    ``lam``: the λ of every penalised strategy (default: each strategy's own default). The other settings are the
    sweep's (``config``: clips, held-out clips, steps, rank, learning rate, seeds, curvature utterances and the
    evaluation's speakers)."""
    from tts_adapt.data.readers import read_dataset
    from tts_adapt.data.target_split import prepare_target
    from tts_adapt.evaluate.scoring import Listeners, RealAudio
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.speakers import SpeakerTable
    from tts_adapt.models.synthesis import default_model_dir

    config = config or SweepConfig()
    sequence = parse_sequence(sequence)
    if data is None:
        raise SequenceError("--sequence clones speakers of a dataset: give --data (the embedded corpus has three "
                            "target speakers)")
    out, t_all = Path(out), time.time()
    model_dir = Path(model) if model else default_model_dir()
    backend = TTSBackend.from_pretrained(model_dir)
    if backend.speakers.kind != "d_vector":
        raise SequenceError(f"{model_dir}: a speaker-ID-table model gives each adapter one trained table row, the "
                            "same new row for every voice, so a model adapted to a later voice cannot speak the "
                            "earlier ones; the sequence needs a d-vector model")
    speakers = sorted({u.speaker for u in read_dataset(Path(data), layout, validate_audio=False)[0]})
    table = SpeakerTable("id_table", list(backend.speakers.names))
    check_voices(sequence, speakers, table.knows)

    targets = {}
    for spk in sequence:
        prepared = prepare_target(data, spk, out / spk / "target", clips=config.clips, heldout=config.heldout,
                                  layout=layout, seed=config.seed)
        targets[spk] = prepared
        echo(f"voice {spk}: {prepared.clips} adaptation clips, {prepared.heldout} held out ({out / spk / 'target'})")
    curvatures = ensure_curvatures(config, model_dir, backend, curvature_data or data, out / "curvature",
                                   layout=layout, cache_dir=cache_dir, progress=progress, echo=echo, device=device)
    replay = replay_data or curvature_data or data
    real, listeners = RealAudio(backend.audio.sample_rate), Listeners.full()
    methods = list(config.strategies) + [ISOLATION]
    rows = []
    jobs = [(m, s) for m in methods for s in config.adaptation_seeds()]
    for k, (method, seed) in enumerate(jobs, 1):
        echo(f"[{k}/{len(jobs)}] {method}, seed {seed}: {' → '.join(sequence)}")
        rows += run_method(out, method, seed, sequence, targets, config, lam=method_lam(method, lam),
                           model_dir=model_dir, data=data, layout=layout, curvature=curvatures, replay=replay,
                           cache_dir=cache_dir, real=real, listeners=listeners, progress=progress, echo=echo,
                           device=device, precision=precision)
    per_seed = [method_measures([r for r in rows if r["method"] == m and r["seed"] == s], sequence)
                for m, s in jobs]
    lines = aggregate_methods(per_seed)
    summary = summarise(lines, config, sequence, lam, seconds=time.time() - t_all, per_seed=per_seed)
    write_outputs(out, lines, summary, rows)
    if publish is not None:
        Path(publish).mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED:
            shutil.copyfile(out / name, Path(publish) / name)
    return summary


def run_method(out: Path, method: str, seed: int, sequence: tuple[str, ...], targets: dict, config: SweepConfig, *,
               lam: float, model_dir: Path, data, layout: str, curvature: dict, replay, cache_dir, real, listeners,
               progress: bool, echo, device, precision: str) -> list[dict]:
    """Every stage of one method and seed, adapted (or reused) and evaluated: one row per (stage, voice)."""
    folder = method_folder(out, method, seed, config)
    isolated = method == ISOLATION
    strategy = "lora" if isolated else method
    cfg = AdaptConfig(strategy=strategy, lam=lam, steps=config.steps, rank=config.rank, lr=config.lr, seed=seed)
    needs_replay = get_strategy(strategy).needs_replay_data
    if needs_replay and replay is None:
        raise ValueError(f"strategy {strategy} replays pretraining utterances: give --replay-data (or "
                         "--curvature-data, or --data with the pretraining speakers)")
    own: dict[str, Path] = {}  # each voice's own adapter: its conditioning
    previous: Path | None = None
    rows = []
    for i, spk in enumerate(sequence, 1):
        stage = stage_folder(folder, i, spk)
        clips = targets[spk].clips_dir
        echo(f"  stage {i}/{len(sequence)}: {spk}")
        if isolated:
            voice = cell_folder(out / spk, cell_name("lora", 0.0), seed, config)  # the sweep's plain-LoRA cell
            with cell_lock(voice):
                run = adapt_cell(voice, clips, model_dir, cfg, None, progress, echo, device=device,
                                 precision=precision)
            own[spk] = voice
            adapter = voice if i == 1 else stage / "adapter"  # one voice merged is that voice's adapter
            if i > 1:
                ensure_merged([own[s] for s in sequence[:i]], adapter, model_dir)
        else:
            # the first stage is the sweep's cell of the first voice; the later ones continue from it
            adapter = cell_folder(out / spk, cell_name(strategy, lam), seed, config) if i == 1 else stage / "adapter"
            checkpoint = adapter / CHECKPOINT_DIR
            if previous is not None and checkpoint.is_dir() \
                    and checkpoint.stat().st_mtime < (previous / RUN_FILE).stat().st_mtime:
                shutil.rmtree(adapter)  # interrupted while continuing an earlier version of the previous stage
            with cell_lock(adapter):  # a first stage is a sweep's cell, which another process may be on
                run = adapt_cell(adapter, clips, model_dir, cfg, curvature_for(curvature, strategy, seed), progress,
                                 echo, device=device, precision=precision,
                                 replay_data=replay if needs_replay else None, init_adapter=previous)
            own[spk] = adapter
        previous = adapter
        for j, voice_j in enumerate(sequence[:i], 1):
            # a voice spoken with the stage's own conditioning is the stage's adapter itself, else a view
            view = adapter if own[voice_j] == adapter else \
                make_view(adapter, own[voice_j], targets[voice_j].clips_dir, stage / "views" / voice_j)
            with cell_lock(view) if view == adapter else contextlib.nullcontext():
                report = evaluate_view(view, targets[voice_j].heldout_dir, model_dir, data, layout=layout,
                                       full=j == i, config=config, cache_dir=cache_dir, real=real,
                                       listeners=listeners, progress=progress, device=device)
            rows.append(stage_row(method, lam, seed, i, spk, j, voice_j, report, run if j == i else None))
    return rows


def stage_row(method: str, lam: float, seed: int, stage: int, stage_voice: str, voice_index: int, voice: str,
              report: dict, run: dict | None) -> dict:
    """One line of stages.csv: voice ``voice`` (learned at stage ``voice_index``) after stage ``stage``."""
    row = {"method": method, "lam": lam, "seed": seed, "stage": stage, "stage_voice": stage_voice,
           "voice_stage": voice_index, "voice": voice, "new": voice_index == stage}
    for column, group, metric, which in VOICE_FIGURES + FORGETTING_FIGURES:
        row[column] = _get(report, group, metric, which)
    for column in ("target_mcd", "old_dmcd", "unseen_dmcd"):
        row[f"{column}_ci"] = _get(report, *{"target_mcd": ("target", "mcd_db", "adapted_ci"),
                                            "old_dmcd": ("pretrain", "mcd_db", "change_ci"),
                                            "unseen_dmcd": ("unseen", "mcd_db", "change_ci")}[column])
    row["base_target_mcd"] = _get(report, "target", "mcd_db", "base")
    row["adapt_seconds"] = run.get("wall_seconds") if run else None
    row["steps"] = run.get("steps") if run else None
    row["eval_seconds"] = report.get("seconds")
    return row


# ---------------------------------------------------------------------------- the measures
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def method_measures(rows: list[dict], sequence: tuple[str, ...]) -> dict:
    """A method's measures for one seed from its lines of stages.csv (``n`` stages, R[i][j]: voice j's figure
    after stage i):

    * learning = (1/n) Σ_i R[i][i], the new voice right after it is learned;
    * backward transfer = (1/(n−1)) Σ_{j<n} (R[n][j] − R[j][j]), how earlier voices changed by the end (MCD: up
      is worse; similarity: down is worse);
    * old (pretraining) and unseen voices' ΔMCD against the base model after each stage (``…_stage<i>``) and at
      the end (``…_final``, with its bootstrap interval over utterances).
    """
    if not rows:
        raise ValueError("no stages to measure")
    n = len(sequence)
    R = {(r["stage"], r["voice_stage"]): r for r in rows}
    missing = [(i, j) for i in range(1, n + 1) for j in range(1, i + 1) if (i, j) not in R]
    if missing:
        raise ValueError(f"stages.csv lacks voice {missing[0][1]} after stage {missing[0][0]} "
                         f"({len(missing)} evaluations missing)")
    line = {"method": rows[0]["method"], "lam": rows[0]["lam"], "seed": rows[0]["seed"]}
    for key in ("mcd", "similarity", "id", "wer"):
        col = f"target_{key}"
        line[f"learning_{key}"] = _mean(R[i, i].get(col) for i in range(1, n + 1))
        if key == "wer":
            continue  # an earlier voice's words are the model's, not the voice's: BWT on WER says little
        changes = [R[n, j][col] - R[j, j][col] for j in range(1, n)
                   if R[n, j].get(col) is not None and R[j, j].get(col) is not None]
        line[f"bwt_{key}"] = float(np.mean(changes)) if changes else None
    for col in ("old_dmcd", "unseen_dmcd"):
        for i in range(1, n + 1):
            line[f"{col}_stage{i}"] = R[i, i][col]
        line[f"{col}_final"] = R[n, n][col]
        line[f"{col}_final_ci"] = R[n, n][f"{col}_ci"]
    line["old_dsimilarity_final"] = R[n, n]["old_dsimilarity"]
    line["stages"] = n
    line["adapt_seconds"] = _mean(R[i, i]["adapt_seconds"] for i in range(1, n + 1))
    return line


def aggregate_methods(per_seed: list[dict]) -> list[dict]:
    """One line per method: each measure's mean over seeds and, over two seeds or more, its standard error
    ``<measure>_se`` (the sweep's rule); with one seed the final figures keep their bootstrap interval."""
    methods: dict[str, list[dict]] = {}
    for r in per_seed:
        methods.setdefault(r["method"], []).append(r)
    lines = []
    for method, group in methods.items():
        line = {"method": method, "lam": group[0]["lam"], "seeds": len(group), "stages": group[0]["stages"]}
        numeric = [k for k, v in group[0].items() if k not in line and k not in ("seed",) and not k.endswith("_ci")]
        for key in numeric:
            values = [g[key] for g in group if g.get(key) is not None]
            line[key] = float(np.mean(values)) if values else None
            line[f"{key}_se"] = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        if len(group) == 1:
            for key in (k for k in group[0] if k.endswith("_ci")):
                line[key] = group[0][key]
        lines.append(line)
    return lines


def verdict(line: dict, reference: dict, key: str, lower_is_better: bool, per_seed: list[dict] | None = None) -> str:
    """``better``, ``worse`` or ``tie`` (inside the noise: :func:`tts_adapt.evaluate.sweep.outside_noise`, on the
    difference paired by seed when ``per_seed`` holds the methods' lines per seed) of ``line`` against
    ``reference`` in ``key``; ``–`` where either has no figure."""
    if line.get(key) is None or reference.get(key) is None:
        return "–"
    paired = None if per_seed is None else paired_difference(per_seed, line["method"], reference["method"], key,
                                                             by="method")
    if not outside_noise(line, reference, key, paired):
        return "tie"
    return "better" if (line[key] < reference[key]) == lower_is_better else "worse"


def summarise(lines: list[dict], config: SweepConfig, sequence: tuple[str, ...], lam: float | None,
              seconds: float, per_seed: list[dict] | None = None) -> dict:
    """The summary: settings, one line per method and each method's verdicts against the reference method
    (plain LoRA continued when it ran, else the first method), paired by seed given ``per_seed``."""
    reference = next((r for r in lines if r["method"] == "lora"), lines[0] if lines else None)
    comparison = {}
    if reference is not None:
        for r in lines:
            if r is not reference:
                comparison[r["method"]] = {key: verdict(r, reference, key, lower, per_seed)
                                           for key, lower, _ in MEASURES}
    return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
            "sequence": list(sequence), "lam": lam, "methods": lines,
            "reference": reference["method"] if reference else None, "comparison": comparison,
            "measures": {key: label for key, _, label in MEASURES},
            "rule": "a difference is called when it exceeds twice the standard error of the difference paired by "
                    "seed (one seed: when the 95 % bootstrap intervals do not overlap; figures without one, a tie)",
            "seconds": round(seconds, 1)}


# ---------------------------------------------------------------------------- tables and plot
def _fmt(v, signed: bool = False, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _with_noise(r: dict, key: str, signed: bool = False, digits: int = 2) -> str:
    text = _fmt(r.get(key), signed, digits)
    if r.get(key) is None:
        return text
    if r.get(f"{key}_se") is not None:
        return f"{text} ± {r[f'{key}_se']:.{digits}f}"
    ci = r.get(f"{key}_ci")
    if ci and None not in ci:
        return f"{text} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
    return text


def to_markdown(lines: list[dict], summary: dict) -> str:
    n = len(summary["sequence"])
    head = ["method", "λ", "seeds", "learning MCD ↓", "learning sim ↑", "learning ID ↑", "learning WER ↓",
            "BWT MCD ↓", "BWT sim ↑", "BWT ID ↑", "old ΔMCD after each stage", "old ΔMCD end ↓", "unseen ΔMCD end ↓"]
    out = [f"Voices cloned in order: {' → '.join(summary['sequence'])}.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in lines:
        stages = " → ".join(_fmt(r.get(f"old_dmcd_stage{i}"), signed=True) for i in range(1, n + 1))
        out.append("| " + " | ".join([
            LABELS.get(r["method"], r["method"]), f"{r['lam']:g}" if r["lam"] else "–", str(r["seeds"]),
            _with_noise(r, "learning_mcd"), _with_noise(r, "learning_similarity", digits=3),
            _with_noise(r, "learning_id"), _with_noise(r, "learning_wer"),
            _with_noise(r, "bwt_mcd", signed=True), _with_noise(r, "bwt_similarity", signed=True, digits=3),
            _with_noise(r, "bwt_id", signed=True),
            stages, _with_noise(r, "old_dmcd_final", signed=True), _with_noise(r, "unseen_dmcd_final", signed=True),
        ]) + " |")
    seeds = max((r["seeds"] for r in lines), default=1)
    out += ["", (f"Each line is the mean over {seeds} adaptation seeds; ± is the standard error over seeds."
                 if seeds > 1 else "One adaptation seed per line; [low, high] is the 95 % bootstrap interval over "
                                   "utterances of the last stage (learning and backward transfer have none: a "
                                   "difference in them is not called)."),
            ("Learning: the new voice's target MCD-DTW, speaker similarity, share of its held-out clips identified "
             "as it among all voices (ID) and word error rate right after it is learned, averaged over stages. Backward transfer (BWT): earlier voices' figure after the last stage minus right after "
             "they were learned, averaged over the earlier voices (MCD: positive is degradation). Old / unseen "
             "ΔMCD: the pretraining voices' and unseen voices' MCD change against the base model.")]
    ref = summary.get("reference")
    if ref and summary.get("comparison"):
        out += ["", f"Against {LABELS.get(ref, ref)} ({summary['rule']}):"]
        for method, verdicts in summary["comparison"].items():
            said = "; ".join(f"{SHORT[k]} {v}" for k, v in verdicts.items())
            out.append(f"- {LABELS.get(method, method)}: {said}.")
    return "\n".join(out) + "\n"


def sequence_plot(lines: list[dict], sequence: list[str], path: Path) -> None:
    """Three panels: old voices' ΔMCD after each stage, unseen voices' ΔMCD after each stage (one line per
    method), and learning against backward transfer (one point per method); bars: ± s.e. over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    stages = list(range(1, len(sequence) + 1))
    ticks = [f"{i}: {s}" for i, s in zip(stages, sequence)]
    colours = plt.get_cmap("tab10")
    for k, r in enumerate(lines):
        label = LABELS.get(r["method"], r["method"])
        for ax, col in ((axes[0], "old_dmcd"), (axes[1], "unseen_dmcd")):
            ys = [r.get(f"{col}_stage{i}") for i in stages]
            if all(y is None for y in ys):
                continue
            errs = [r.get(f"{col}_stage{i}_se") or 0.0 for i in stages]
            ax.errorbar(stages, [np.nan if y is None else y for y in ys], yerr=errs, fmt="o-", color=colours(k),
                        label=label, capsize=3)
        if r.get("learning_mcd") is not None and r.get("bwt_mcd") is not None:
            axes[2].errorbar([r["learning_mcd"]], [r["bwt_mcd"]], xerr=[r.get("learning_mcd_se") or 0.0],
                             yerr=[r.get("bwt_mcd_se") or 0.0], fmt="o", color=colours(k), label=label, capsize=3,
                             ms=8)
            axes[2].annotate(r["method"], (r["learning_mcd"], r["bwt_mcd"]), textcoords="offset points",
                             xytext=(6, 5 if k % 2 == 0 else -13), fontsize=8)  # neighbours alternate sides
    for ax, title in ((axes[0], "old (pretraining) voices: MCD increase (dB) ↓"),
                      (axes[1], "unseen voices: MCD increase (dB) ↓")):
        ax.set_xticks(stages, ticks, fontsize=8)
        ax.set_xlabel("after stage (voice learned)")
        ax.set_title(title, fontsize=10)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
    axes[2].set_xlabel("learning: new voice's MCD right after it is learned (dB) ←")
    axes[2].set_ylabel("backward transfer: earlier voices' MCD change (dB) ↓")
    axes[2].axhline(0.0, color="grey", lw=0.8)
    axes[2].set_title("learning against backward transfer (better: down and left)", fontsize=10)
    axes[2].grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # below the panels, where it hides no line
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"Cloning {len(sequence)} voices one after another (bars: ± s.e. over seeds)")
    fig.tight_layout(rect=(0, 0.06 * ((len(handles) + 2) // 3) + 0.02, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_outputs(out: Path, lines: list[dict], summary: dict, rows: list[dict]) -> None:
    write_csv_atomic(out / "stages.csv", rows)
    write_csv_atomic(out / "sequence.csv", lines)
    write_text_atomic(out / "sequence.md", to_markdown(lines, summary))
    write_json_atomic(out / "sequence.json", {**summary, "stages": rows})
    sequence_plot(lines, summary["sequence"], out / "sequence.png")
