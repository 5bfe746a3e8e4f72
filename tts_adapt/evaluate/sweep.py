"""The strategy × λ sweep: adapt and evaluate every cell of a grid, then tabulate and plot the trade-off.

Layout of a sweep folder::

    target/            adaptation clips and held-out clips (tts-adapt prepare-target), unless given
    curvature/         one file per curvature method the strategies need (fitted once)
    cells/<name>/      adapter/ (tts-adapt adapt) and adapter/eval/ (tts-adapt evaluate), for the sweep's seed;
    cells/<name>-seed<k>/   the same for every other adaptation seed k
    runs.csv           one line per cell and seed
    table.csv, table.md, pareto.png, summary.json   one line per cell: the mean over seeds ± standard error

A difference is called only when it is outside the noise: over several seeds, when it exceeds twice the
standard error of the difference of the two means; with one seed, when the 95 % bootstrap intervals over
utterances of the two figures do not overlap. Otherwise it is a tie.

Every cell is cached: a finished adapter whose run.json holds the same settings
is kept, an interrupted one resumes, a report newer than its adapter is reused.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.continual import adapter_fingerprint
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.strategies.lalora import LoraPointBuilder
from tts_adapt.adapt.train import adapt
from tts_adapt.curvature.curvature_config import LORA_METHODS
from tts_adapt.curvature.run import fit_curvature_file
from tts_adapt.curvature.storage import Curvature, CurvatureFileError, CurvatureMismatchError
from tts_adapt.data.corpus.manifest import choose_target, corpus_targets
from tts_adapt.data.target_split import prepare_target
from tts_adapt.evaluate.adapter import evaluate_adapter
from tts_adapt.evaluate.scoring import Listeners, RealAudio
from tts_adapt.evaluate.sweep_config import SweepConfig
from tts_adapt.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.synthesis import default_model_dir

PUBLISHED = ("table.csv", "table.md", "summary.json", "pareto.png", "runs.csv")
LEARNING_SIM_TOLERANCE = 0.02  # target similarity within this of plain LoRA counts as equal learning
LEARNING_MCD_TOLERANCE = 0.05  # and target MCD within 5 %


def cell_name(strategy: str, lam: float) -> str:
    return f"{strategy}_lam{lam:g}" if get_strategy(strategy).uses_lam else strategy


def cell_folder(out: Path, name: str, seed: int, config: SweepConfig) -> Path:
    """``cells/<name>/adapter`` for the sweep's seed (``config.seed``), ``cells/<name>-seed<k>/adapter`` for any
    other adaptation seed k: a folder names one seed whichever seeds a run asks for, so runs of a few seeds each
    (e.g. two processes, ``--seeds 0,1`` and ``--seeds 2``) fill one sweep."""
    return out / "cells" / (name if seed == config.seed else f"{name}-seed{seed}") / "adapter"


def adapt_cell(folder: Path, clips_dir: Path, model_dir: Path, cfg, curvature, progress: bool, echo, *,
               device: str | None = "auto", precision: str = "fp32", replay_data: str | Path | None = None,
               init_adapter: Path | None = None) -> dict:
    """A finished adapter in ``folder`` with these settings, else adapt (resuming an interrupted run) on
    ``device`` at ``precision``; ``init_adapter``: continue from that adapter (a finished one counts only when it
    started from the same weights)."""
    run_json = folder / "run.json"
    if run_json.is_file():
        run = json.loads(run_json.read_text(encoding="utf-8"))
        started = (run.get("init_adapter") or {}).get("fingerprint")
        if cfg.same_run(run.get("config")) and run.get("base_model") == str(model_dir) \
                and run.get("target_dir") == str(clips_dir) \
                and started == (adapter_fingerprint(init_adapter) if init_adapter is not None else None):
            return run
        echo(f"      {folder}: settings changed, adapting again")
        shutil.rmtree(folder)
    resume = (folder / "checkpoint" / "state.pt").is_file()
    # every clip of the folder: the sweep chose their number (config.clips) or the user did (--target-dir)
    return adapt(clips_dir, folder, model_dir, cfg, curvature=curvature, resume=resume, progress=progress,
                 max_clips=None, device=device, precision=precision, replay_data=replay_data,
                 init_adapter=init_adapter)


def run_sweep(out: str | Path, config: SweepConfig | None = None, *, model: str | Path | None = None,
              data: str | Path | None = None, layout: str = "auto", target_speaker: str | None = None,
              target_dir: str | Path | None = None, heldout_dir: str | Path | None = None,
              curvature_data: str | Path | None = None, replay_data: str | Path | None = None,
              cache_dir: str | Path | None = None,
              publish: str | Path | None = None, progress: bool = True, echo=print, device: str | None = "auto",
              precision: str = "fp32") -> dict:
    """Adapt and evaluate every (strategy, λ) of ``config``; write table.csv / table.md / pareto.png /
    summary.json into ``out`` and return the summary.

    ``data``: the dataset of old and unseen speakers (and of the target unless ``target_dir`` is given);
    ``target_speaker``: the speaker of ``data`` to clone (default: the corpus's target); several, as a list or
    comma-separated (or ``"all"``: every speaker of the corpus's target set), sweep each into ``out/<speaker>/``
    with one shared ``out/curvature/`` and pool their lines in ``out`` (:func:`pool_targets`);
    ``target_dir`` / ``heldout_dir``: the user's own adaptation and held-out clips of the target;
    ``publish``: a folder (e.g. in the docs) that receives copies of the table, summary and plot;
    ``device`` and ``precision``: where and how adaptations, curvature fits and evaluations run;
    ``replay_data``: the pretraining utterances a replaying strategy (ilora) replays (default: ``curvature_data``,
    else ``data``).
    """
    config = config or SweepConfig()  # (not a default argument: building one imports PyTorch)
    out = Path(out)
    t_all = time.time()
    targets = target_speakers(target_speaker, data) if target_dir is None else [None]
    kwargs = dict(model=model, data=data, layout=layout, target_dir=target_dir, heldout_dir=heldout_dir,
                  curvature_data=curvature_data, replay_data=replay_data, cache_dir=cache_dir, progress=progress,
                  echo=echo, device=device, precision=precision)
    if len(targets) == 1:
        runs = sweep_cells(out, config, target_speaker=targets[0], **kwargs)
    else:
        runs = []
        for k, speaker in enumerate(targets, 1):
            echo(f"== target {k}/{len(targets)}: {speaker} ({out / speaker})")
            found = sweep_cells(out / speaker, config, target_speaker=speaker, curvature_dir=out / "curvature",
                                **kwargs)
            runs += [{"target": speaker, **r} for r in found]
            write_sweep(out / speaker, config, found, seconds=0.0)  # each target's own table, as a one-target sweep
    summary = write_sweep(out, config, runs, seconds=time.time() - t_all)
    if len(targets) > 1:
        summary["targets"] = targets
        write_json_atomic(out / "summary.json", summary)
    if publish is not None:
        Path(publish).mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED:
            shutil.copyfile(out / name, Path(publish) / name)
    return summary


def target_speakers(target_speaker: str | list[str] | None, data) -> list[str | None]:
    """The speakers a sweep clones: ``None`` (the corpus's target, chosen later), one, several (a list or
    comma-separated), or ``"all"``: every speaker of the embedded corpus's target set."""
    if target_speaker is None:
        return [None]
    names = [t.strip() for t in target_speaker.split(",")] if isinstance(target_speaker, str) else list(target_speaker)
    names = [t for t in names if t]
    if names == ["all"]:
        if data is None:
            raise ValueError("--target-speaker all needs --data: a corpus whose manifest names its target speakers")
        names = corpus_targets(Path(data))
    if not names:
        raise ValueError(f"--target-speaker: no speaker in {target_speaker!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--target-speaker: each speaker once, got {', '.join(names)}")
    return names


def write_sweep(out: Path, config: SweepConfig, runs: list[dict], *, seconds: float) -> dict:
    """Lines per cell from ``runs`` (one per cell, seed and target), the headline, and the files in ``out``."""
    rows = aggregate(runs)
    summary = summarise(rows, config, seconds=seconds, runs=runs)
    write_outputs(out, rows, summary, runs)
    return summary


def sweep_cells(out: Path, config: SweepConfig, *, model: str | Path | None = None, data: str | Path | None = None,
                layout: str = "auto", target_speaker: str | None = None, target_dir: str | Path | None = None,
                heldout_dir: str | Path | None = None, curvature_data: str | Path | None = None,
                replay_data: str | Path | None = None, cache_dir: str | Path | None = None,
                curvature_dir: Path | None = None, progress: bool = True, echo=print, device: str | None = "auto",
                precision: str = "fp32") -> list[dict]:
    """Adapt and evaluate every (strategy, λ, seed) of ``config`` for one target in ``out`` (cached cells
    reused) and return one line per cell and seed; curvature files go to ``curvature_dir`` (default:
    ``out/curvature``), which several targets' sweeps may share."""
    model_dir = Path(model) if model else default_model_dir()
    backend = TTSBackend.from_pretrained(model_dir)
    if target_dir is not None:
        if heldout_dir is None:
            raise ValueError("with --target-dir, give --heldout-dir: held-out clips of the same speaker to "
                             "measure learning on")
        # absolute, as prepare_target writes them: run records and score caches name one folder one way
        clips_dir, heldout = Path(target_dir).resolve(), Path(heldout_dir).resolve()
    else:
        if data is None:
            raise ValueError("give --data (a dataset with the target speaker) or --target-dir and --heldout-dir")
        if target_speaker is None:
            target_speaker = choose_target(Path(data))
        prepared = prepare_target(data, target_speaker, out / "target", clips=config.clips,
                                  heldout=config.heldout, layout=layout, seed=config.seed)
        clips_dir, heldout = prepared.clips_dir, prepared.heldout_dir
        echo(f"target {target_speaker}: {prepared.clips} adaptation clips, {prepared.heldout} held out ({out / 'target'})")

    curvatures = ensure_curvatures(config, model_dir, backend, curvature_data or data,
                                   curvature_dir or out / "curvature", layout=layout, cache_dir=cache_dir,
                                   progress=progress, echo=echo, device=device)
    curvature_of = {s: get_strategy(s).curvature_method for s in config.strategies}

    replay = replay_data or curvature_data or data
    if replay is None and any(get_strategy(s).needs_replay_data for s in config.strategies):
        raise ValueError("strategy ilora replays pretraining utterances: give --replay-data (or --curvature-data, "
                         "or --data with the pretraining speakers)")
    real, listeners = RealAudio(backend.audio.sample_rate), Listeners.full()
    cells = [(strategy, lam, seed) for strategy, lam in config.cells() for seed in config.adaptation_seeds()]
    found: dict[int, dict] = {}
    # a cell another process is working on waits until the others are done (then it is reused, or taken over)
    for blocking in (False, True):
        for k, (strategy, lam, seed) in enumerate(cells, 1):
            if k in found:
                continue
            name = cell_name(strategy, lam)
            folder = cell_folder(out, name, seed, config)
            with cell_lock(folder, blocking=blocking) as mine:
                if not mine:
                    echo(f"[{k}/{len(cells)}] {name}, seed {seed}: another process is on it; later")
                    continue
                echo(f"[{k}/{len(cells)}] {name}, seed {seed}")
                cfg = AdaptConfig(strategy=strategy, lam=lam, steps=config.steps, rank=config.rank, lr=config.lr,
                                  seed=seed)
                method = curvature_of[strategy]
                curvature = curvatures.get((method, seed if method in LORA_METHODS else None))
                run = adapt_cell(folder, clips_dir, model_dir, cfg, curvature,
                                 progress, echo, device=device, precision=precision,
                                 replay_data=replay if get_strategy(strategy).needs_replay_data else None)
                report = evaluated(folder, heldout, model_dir, data, config, layout=layout, cache_dir=cache_dir,
                                   real=real, listeners=listeners, progress=progress, device=device)
                found[k] = {**cell_row(name, strategy, lam, run, report), "seed": seed}
    runs = [found[k] for k in sorted(found)]
    return runs


@contextlib.contextmanager
def cell_lock(folder: Path, blocking: bool = True):
    """Hold the lock of the cell whose adapter goes to ``folder`` (a file next to it, kept when the adapter is
    redone): yields True when held; with ``blocking`` False, yields False at once when another process holds it.
    Several processes (e.g. one per seed or per target) may then fill one sweep folder without training one
    cell twice. Where the system has no ``fcntl`` (Windows), every lock is granted."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield True
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def evaluated(folder: Path, heldout: Path, model_dir: Path, data, config: SweepConfig, *, layout: str, cache_dir,
              real, listeners, progress: bool, device, full: bool = True, images: int | None = None) -> dict:
    """The adapter's report: ``folder/eval/report.json`` when newer than its run record and made with today's
    measures, else a new evaluation: the held-out target clips and, when ``full``, the old and unseen voices;
    ``images``: mel-spectrogram images to draw (default: the evaluation's)."""
    report_file = folder / "eval" / "report.json"
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else None
    if report is None or report_file.stat().st_mtime < (folder / "run.json").stat().st_mtime \
            or not _current(report):
        extra = {} if images is None else {"images": images}
        report = evaluate_adapter(folder, model=model_dir, target_dir=heldout, data=data, layout=layout,
                                  old_speakers=config.old_speakers if full else 0,
                                  unseen_speakers=config.unseen_speakers if full else 0,
                                  per_speaker=config.per_speaker, cache_dir=cache_dir, real=real,
                                  listeners=listeners, progress=progress, device=device, **extra)
    return report


def ensure_curvatures(config: SweepConfig, model_dir: Path, backend, data, folder: Path, *, layout: str, cache_dir,
                      progress: bool, echo, device: str | None = "auto") -> dict:
    """The curvature files ``config.strategies`` need, by (method, LoRA seed): fitted once into ``folder`` and
    reused (:func:`ensure_curvature`). LaLoRA's Fisher holds at one LoRA initialisation: one file per adaptation
    seed (key (method, seed)); the others' key is (method, None)."""
    curvatures = {}
    curvature_of = {s: get_strategy(s).curvature_method for s in config.strategies}
    lora_seeds = {m: config.adaptation_seeds() if m in LORA_METHODS else [None] for m in curvature_of.values() if m}
    for method in sorted(lora_seeds):
        for lora_seed in lora_seeds[method]:
            curvatures[method, lora_seed] = ensure_curvature(
                model_dir, backend, data, folder, method,
                num_utterances=config.curvature_utterances, seed=config.seed, layout=layout, cache_dir=cache_dir,
                progress=progress, echo=echo, device=device,
                lora_point=None if lora_seed is None else LoraPointBuilder(
                    rank=config.rank, alpha=AdaptConfig.alpha, lora_seed=lora_seed, progress=progress))
    return curvatures


def curvature_for(curvatures: dict, strategy: str, seed: int) -> Path | None:
    """The curvature file of ``strategy`` for adaptation seed ``seed`` among :func:`ensure_curvatures`' files."""
    method = get_strategy(strategy).curvature_method
    return curvatures.get((method, seed if method in LORA_METHODS else None))


def _current(report: dict) -> bool:
    """Was the report written with today's measures (intervals on every figure)?"""
    return bool(report.get("rows")) and all("adapted_ci" in r for r in report["rows"])


def ensure_curvature(model_dir: Path, backend, data, folder: Path, method: str, *, num_utterances: int, seed: int,
                     layout: str, cache_dir, progress: bool, echo, device: str | None = "auto",
                     lora_point: LoraPointBuilder | None = None) -> Path:
    """``folder/<method>.safetensors``: reused when it matches the model, else fitted on ``num_utterances``.
    A LaLoRA method's (``lora_point``): ``folder/<method>-r<rank>-seed<seed>.safetensors``, for that LoRA setup."""
    path = folder / (f"{method}.safetensors" if lora_point is None
                     else f"{method}-r{lora_point.rank}-seed{lora_point.lora_seed}.safetensors")
    try:
        found = Curvature.load(path, backend)
        if lora_point is None or {k: found.info.get("lora", {}).get(k) for k in lora_point.setup} == lora_point.setup:
            return path
    except (CurvatureFileError, CurvatureMismatchError, FileNotFoundError):
        pass
    if data is None:
        raise ValueError(f"strategy needing {method} curvature: give --curvature-data (pretraining utterances)")
    echo(f"fitting {method} curvature on {num_utterances} pretraining utterances -> {path}")
    path.unlink(missing_ok=True)
    fit_curvature_file(model_dir, data, path, method=method, num_utterances=num_utterances, seed=seed, layout=layout,
                       cache_dir=cache_dir, progress=progress, device=device, lora_point=lora_point)
    return path


def _get(report: dict, group: str, metric: str, key: str):
    for r in report["rows"]:
        if r["set"] == group and r["metric"] == metric:
            v = r.get(key)
            if isinstance(v, list):
                return [None if x is None or (isinstance(x, float) and math.isnan(x)) else x for x in v]
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    return [None, None] if key.endswith("_ci") else None


#: The figures of a sweep line: (column, set, measure, which figure of the report's row).
CELL_FIGURES = (
    ("target_similarity", "target", "similarity", "adapted"), ("target_mcd", "target", "mcd_db", "adapted"),
    ("target_f0_cents", "target", "f0_cents", "adapted"), ("target_wer", "target", "wer", "adapted"),
    ("target_id_top1", "target", "id_top1", "adapted"), ("target_mel_loss", "target", "mel_loss", "adapted"),
    ("target_dnsmos", "target", "dnsmos", "adapted"),
    ("old_dmcd", "pretrain", "mcd_db", "change"), ("old_dwer", "pretrain", "wer", "change"),
    ("old_dsimilarity", "pretrain", "similarity", "change"), ("old_did_top1", "pretrain", "id_top1", "change"),
    ("unseen_dmcd", "unseen", "mcd_db", "change"), ("unseen_dwer", "unseen", "wer", "change"),
    ("base_target_similarity", "target", "similarity", "base"), ("base_target_mcd", "target", "mcd_db", "base"),
    ("base_target_mel_loss", "target", "mel_loss", "base"), ("base_target_wer", "target", "wer", "base"),
    ("base_old_mcd", "pretrain", "mcd_db", "base"), ("base_old_wer", "pretrain", "wer", "base"),
)
#: Figures whose 95 % bootstrap interval a line keeps (``<column>_ci``): the noise of a single seed.
CI_FIGURES = ("target_similarity", "target_mcd", "target_mel_loss", "old_dmcd", "old_dwer", "unseen_dmcd")


def cell_row(name: str, strategy: str, lam: float, run: dict, report: dict) -> dict:
    """One line of the sweep from an adapter's run record (run.json) and its evaluation report."""
    row = {"cell": name, "strategy": strategy, "lam": lam}
    for column, group, metric, which in CELL_FIGURES:
        row[column] = _get(report, group, metric, which)
        if column in CI_FIGURES:
            row[f"{column}_ci"] = _get(report, group, metric, f"{which}_ci")
    row.update(steps=run.get("steps"), stopped=run.get("stopped"), adapt_seconds=run.get("wall_seconds"),
               eval_seconds=report.get("seconds"))
    return row


def aggregate(runs: list[dict]) -> list[dict]:
    """One line per cell from its lines per seed (and per target, when the runs name one): every figure's mean
    and, over two runs or more, its standard error ``<column>_se``; with one run the line keeps its bootstrap
    intervals. ``seeds`` and ``targets`` count the distinct seeds and targets, ``runs`` the lines pooled."""
    cells: dict[str, list[dict]] = {}
    for r in runs:
        cells.setdefault(r["cell"], []).append(r)
    rows = []
    for name, group in cells.items():
        row = {k: group[0][k] for k in ("cell", "strategy", "lam")}
        row["seeds"] = len({g.get("seed") for g in group})
        row["targets"] = len({g.get("target") for g in group})
        row["runs"] = len(group)
        for column, *_ in CELL_FIGURES:
            values = [g[column] for g in group if g.get(column) is not None]
            row[column] = float(np.mean(values)) if values else None
            row[f"{column}_se"] = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        if len(group) == 1:
            for column in CI_FIGURES:
                row[f"{column}_ci"] = group[0].get(f"{column}_ci")
        for column in ("steps", "adapt_seconds", "eval_seconds"):
            values = [g[column] for g in group if g.get(column) is not None]
            row[column] = float(np.mean(values)) if values else None
        row["stopped"] = group[0].get("stopped")
        rows.append(row)
    return rows


def paired_difference(runs: list[dict], cell: str, reference: str, column: str, by: str = "cell") -> dict | None:
    """``column`` of ``cell`` minus that of ``reference`` (the values of key ``by`` of the lines), paired by
    (target, seed): the same clips and the same LoRA initialisation, so the target's and the seed's share of the
    noise cancels. Mean, standard error and number of pairs; None under two pairs."""
    of = {(r.get("target"), r.get("seed")): r.get(column) for r in runs if r[by] == reference}
    diffs = [r[column] - of[key] for r in runs if r[by] == cell and r.get(column) is not None
             for key in [(r.get("target"), r.get("seed"))] if of.get(key) is not None]
    if len(diffs) < 2:
        return None
    return {"mean": float(np.mean(diffs)), "se": float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))),
            "pairs": len(diffs)}


def outside_noise(a: dict, b: dict, column: str, paired: dict | None = None) -> bool:
    """Do lines ``a`` and ``b`` differ in ``column`` beyond the noise? Given their ``paired`` difference
    (:func:`paired_difference`): when its mean exceeds twice its standard error; else over seeds: by more than
    twice the standard error of the difference of the means; with one seed: when their 95 % intervals do not
    overlap."""
    if paired is not None:
        return abs(paired["mean"]) > 2.0 * paired["se"]
    if a.get(column) is None or b.get(column) is None:
        return False
    se_a, se_b = a.get(f"{column}_se"), b.get(f"{column}_se")
    if se_a is not None and se_b is not None:
        return abs(a[column] - b[column]) > 2.0 * math.sqrt(se_a ** 2 + se_b ** 2)
    ci_a, ci_b = a.get(f"{column}_ci") or [None, None], b.get(f"{column}_ci") or [None, None]
    if None in ci_a or None in ci_b:
        return False
    return ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0]


STRATEGY_LABELS = {"lora": "LoRA", "l2": "LoRA + L2", "diag": "LoRA + diagonal Fisher", "kfac": "LoRA + K-FAC",
                   "ekfac": "LoRA + EK-FAC", "lalora": "LaLoRA (Laplace on A and B)",
                   "ilora": "I-LoRA (slow adapter + replay)", "selective": "selective LoRA (gated blocks)"}
STRATEGY_COLOURS = {"lora": "black", "l2": "tab:gray", "diag": "tab:orange", "kfac": "tab:blue", "ekfac": "tab:green",
                    "lalora": "tab:purple", "ilora": "tab:red", "selective": "tab:brown"}


def equal_learning(row: dict, lora: dict) -> bool:
    """Does ``row`` learn the target as well as plain LoRA? Target similarity within 0.02, and target MCD and
    held-out teacher-forced mel loss within 5 % (the loss catches a penalty so strong that the adapter
    stays at the base model, which similarity and MCD alone can miss when the base voice is already close)."""
    def within(key: str) -> bool:
        return row.get(key) is None or lora.get(key) is None or row[key] <= lora[key] * (1 + LEARNING_MCD_TOLERANCE)

    return (row["target_similarity"] is not None and lora["target_similarity"] is not None
            and row["target_similarity"] >= lora["target_similarity"] - LEARNING_SIM_TOLERANCE
            and within("target_mcd") and within("target_mel_loss"))


def summarise(rows: list[dict], config: SweepConfig, seconds: float, runs: list[dict] | None = None) -> dict:
    """The headline: per strategy, the λ with the least forgetting among those that learn the target as well
    as plain LoRA (:func:`equal_learning`), i.e. the knee of its learning–forgetting curve; forgetting is the
    old speakers' MCD increase, and a reduction is called only outside the noise (:func:`outside_noise`; with
    ``runs``, the lines per seed and target, on the difference paired by seed and target)."""
    summary = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
               "cells": rows, "seconds": round(seconds, 1),  # this call; cached cells cost nothing
               "cells_seconds": round(sum(((r.get("adapt_seconds") or 0) + (r.get("eval_seconds") or 0))
                                          * r.get("runs", r.get("seeds", 1)) for r in rows), 1)}
    lora = next((r for r in rows if r["strategy"] == "lora"), None)
    if lora is None or lora["old_dmcd"] is None or lora["old_dmcd"] <= 0:
        return summary

    def reduction(r):
        return 1.0 - r["old_dmcd"] / lora["old_dmcd"]

    best = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "lora"):
        ok = [r for r in rows if r["strategy"] == strategy and r["old_dmcd"] is not None and equal_learning(r, lora)]
        r = max(ok, key=reduction) if ok else None
        paired = None if r is None or runs is None else paired_difference(runs, r["cell"], lora["cell"], "old_dmcd")
        best[strategy] = None if r is None else {
            "lam": r["lam"], "target_similarity": r["target_similarity"], "target_mcd": r["target_mcd"],
            "target_mel_loss": r.get("target_mel_loss"), "old_dmcd": r["old_dmcd"],
            "old_dmcd_se": r.get("old_dmcd_se"), "forgetting_reduction": reduction(r),
            "old_dmcd_difference": paired,
            "outside_noise": outside_noise(r, lora, "old_dmcd", paired), "seeds": r.get("seeds", 1),
            "targets": r.get("targets", 1)}
    kfac = best.get("kfac")
    summary["headline"] = {
        "lora": {k: lora.get(k) for k in ("target_similarity", "target_mcd", "target_mel_loss", "old_dmcd",
                                          "old_dmcd_se", "seeds", "targets")},
        "best_at_equal_learning": best,
        "goal_met": bool(kfac is not None and kfac["forgetting_reduction"] >= 0.5 and kfac["outside_noise"]),
        "rule": f"equal learning: target similarity >= LoRA's - {LEARNING_SIM_TOLERANCE}, target MCD and held-out "
                f"mel loss <= LoRA's x {1 + LEARNING_MCD_TOLERANCE:g}; forgetting reduction = 1 - old ΔMCD / "
                "LoRA's old ΔMCD; a reduction inside the noise is a tie",
    }
    return summary


TABLE_COLUMNS = [("cell", "cell"), ("seeds", "seeds"), ("target_similarity", "target sim ↑"),
                 ("target_mcd", "target MCD ↓"), ("target_wer", "target WER ↓"), ("target_id_top1", "target ID ↑"),
                 ("target_mel_loss", "target mel loss ↓"), ("old_dmcd", "old ΔMCD ↓"), ("old_dwer", "old ΔWER ↓"),
                 ("old_dsimilarity", "old Δsim"), ("unseen_dmcd", "unseen ΔMCD ↓"), ("steps", "steps"),
                 ("adapt_seconds", "adapt s")]
PERCENT_COLUMNS = ("target_wer", "target_id_top1", "old_dwer", "unseen_dwer", "old_did_top1")


def _cell(v, key: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if key in ("steps", "seeds", "targets", "adapt_seconds"):
        return f"{v:.0f}"
    if key in PERCENT_COLUMNS:
        return f"{100 * v:+.1f} %" if key.startswith(("old_d", "unseen_d")) else f"{100 * v:.0f} %"
    if key in ("old_dmcd", "unseen_dmcd"):
        return f"{v:+.2f}"
    if key == "old_dsimilarity":
        return f"{v:+.3f}"
    return f"{v:.3f}" if "similarity" in key or "loss" in key else f"{v:.2f}"


def _noise(r: dict, key: str) -> str:
    """`` ± s.e.`` over seeds, else `` [low, high]`` of one seed's bootstrap interval, else nothing."""
    if r.get(f"{key}_se") is not None:
        return f" ± {r[f'{key}_se']:.2f}"
    ci = r.get(f"{key}_ci")
    if ci and None not in ci:
        return f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return ""


def to_markdown(rows: list[dict], summary: dict) -> str:
    pooled = max((r.get("targets", 1) for r in rows), default=1) > 1
    columns = TABLE_COLUMNS[:2] + [("targets", "targets")] + TABLE_COLUMNS[2:] if pooled else TABLE_COLUMNS
    lines = ["| " + " | ".join(label for _, label in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [_cell(r.get(k), k) + (_noise(r, k) if k in ("old_dmcd", "unseen_dmcd") else "")
                 for k, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    base_sim = rows[0].get("base_target_similarity") if rows else None
    if base_sim is not None:
        lines += ["", f"Base model, zero-shot from the target's d-vector: target similarity {base_sim:.3f}, "
                      f"target MCD {rows[0]['base_target_mcd']:.2f} dB" + (" (mean over the targets)." if pooled
                                                                             else ".")]
    seeds = max((r.get("seeds", 1) for r in rows), default=1)
    if pooled:
        targets, runs = max(r["targets"] for r in rows), max(r.get("runs", 1) for r in rows)
        lines += ["", f"Each line is the mean over {runs} runs ({targets} target voices × {seeds} adaptation seeds); "
                      "± is the standard error over runs. A strategy's difference from plain LoRA is judged on the "
                      "difference paired by target and seed."]
    else:
        lines += ["", f"Each line is the mean over {seeds} adaptation seeds; ± is the standard error over seeds."
                  if seeds > 1 else "One adaptation seed per line; [low, high] is the 95 % bootstrap interval over "
                                    "utterances."]
    h = summary.get("headline")
    if h:
        lo = h["lora"]
        lines += ["", f"Headline ({h['rule']}); plain LoRA: target similarity {lo['target_similarity']:.3f}, "
                      f"target MCD {lo['target_mcd']:.2f} dB, old-speaker ΔMCD {lo['old_dmcd']:+.2f} dB:"]
        for strategy, b in h["best_at_equal_learning"].items():
            lines.append(headline_line(strategy, b, h["goal_met"]))
    return "\n".join(lines) + "\n"


def headline_line(strategy: str, b: dict | None, goal_met: bool) -> str:
    """One strategy's line of the headline (``b``: its entry of ``best_at_equal_learning``)."""
    label = STRATEGY_LABELS.get(strategy, strategy)
    uses_lam = get_strategy(strategy).uses_lam
    if b is None:
        return (f"- {label}: no λ of the grid learns the target as well as plain LoRA." if uses_lam
                else f"- {label}: does not learn the target as well as plain LoRA.")
    name = f"{label}, λ = {b['lam']:g}" if uses_lam else label
    cut = b["forgetting_reduction"]
    change = f"forgetting cut by {100 * cut:.0f} %" if cut >= 0 else f"forgetting raised by {-100 * cut:.0f} %"
    paired = b.get("old_dmcd_difference")
    if paired:
        change += f" (paired difference {paired['mean']:+.2f} ± {paired['se']:.2f} dB over {paired['pairs']} runs)"
    verdict = "" if b.get("outside_noise", True) else " — inside the noise: a tie with plain LoRA"
    goal = f" (goal 50 %: {'met' if goal_met else 'not met'})." if strategy == "kfac" else "."
    return (f"- {name}: target similarity {b['target_similarity']:.3f}, target MCD {b['target_mcd']:.2f} dB, "
            f"old-speaker ΔMCD {b['old_dmcd']:+.2f} dB: {change}{verdict}{goal}")


def pareto_plot(rows: list[dict], path: Path) -> None:
    """Forgetting (x) against learning (y), one curve per strategy through its λ values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    colours, labels = STRATEGY_COLOURS, STRATEGY_LABELS
    panels = ((axes[0], "target_similarity", "target speaker similarity ↑"),
              (axes[1], "target_mcd", "target MCD-DTW (dB) ↓"),
              (axes[2], "target_mel_loss", "target held-out mel loss ↓"),
              (axes[3], "target_wer", "target word error rate ↓"))
    for ax, key, ylabel in panels:
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            pts = [r for r in rows if r["strategy"] == strategy and r[key] is not None and r["old_dmcd"] is not None]
            pts.sort(key=lambda r: r["lam"])
            if not pts:
                continue
            xs, ys = [r["old_dmcd"] for r in pts], [r[key] for r in pts]
            xerr = [_error_bar(r, "old_dmcd") for r in pts]
            xerr = [[e[0] for e in xerr], [e[1] for e in xerr]]
            if strategy == "lora":
                ax.errorbar(xs, ys, xerr=xerr, fmt="*", ms=12, color=colours[strategy], label=labels[strategy],
                            zorder=3, capsize=3)
                continue
            if not get_strategy(strategy).uses_lam:  # one point, no λ to draw a curve through
                ax.errorbar(xs, ys, xerr=xerr, fmt="s", ms=7, color=colours.get(strategy),
                            label=labels.get(strategy, strategy), zorder=3, capsize=3)
                continue
            ax.errorbar(xs, ys, xerr=xerr, fmt="o-", color=colours.get(strategy), label=labels.get(strategy, strategy),
                        capsize=3)
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(f"λ={r['lam']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        base_key = f"base_{key}"
        if rows and rows[0].get(base_key) is not None:
            ax.scatter([0.0], [rows[0][base_key]], marker="D", facecolors="none", edgecolors="black",
                       label="base model (zero-shot)", zorder=3)  # hollow: no strategy's colour
        ax.set_xlabel("forgetting: old speakers' MCD increase (dB) ←\n(bars: ± s.e. over runs, or one run's 95 % CI)",
                      fontsize=8)
        ax.set_ylabel(ylabel)
        if key != "target_similarity":  # lower is better: up is better in every panel
            ax.invert_yaxis()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning the new voice against forgetting the old ones (better: up and to the left)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _error_bar(r: dict, key: str) -> tuple[float, float]:
    """(below, above) of ``r[key]``: its standard error over seeds, else its bootstrap interval, else none."""
    if r.get(f"{key}_se") is not None:
        return r[f"{key}_se"], r[f"{key}_se"]
    ci = r.get(f"{key}_ci")
    if ci and None not in ci:
        return max(0.0, r[key] - ci[0]), max(0.0, ci[1] - r[key])
    return 0.0, 0.0


def write_outputs(out: Path, rows: list[dict], summary: dict, runs: list[dict] | None = None) -> None:
    write_csv_atomic(out / "runs.csv", runs if runs is not None else rows)
    write_csv_atomic(out / "table.csv", rows)
    write_text_atomic(out / "table.md", to_markdown(rows, summary))
    write_json_atomic(out / "summary.json", summary)
    pareto_plot(rows, out / "pareto.png")
