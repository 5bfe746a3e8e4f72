"""Clone a voice: LoRA fine-tuning of the base model on a target speaker, under the run's strategy.

:func:`adapt` is a composition: read the target's clips, make the target a speaker of the model, let
the strategy (:mod:`tts_adapt.adapt.strategies`) wrap the model, run the shared training loop
(:class:`~tts_adapt.models.trainer.Trainer`) with the strategy as a callback, and save the adapter
of the best validation (:mod:`tts_adapt.adapt.adapter` describes the folder). While it trains, the
output folder holds ``checkpoint/state.pt``, the loop's resumable state (removed at the end).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tts_adapt import __version__
from tts_adapt.adapt.adapter import TARGET_NAME, add_target_speaker, save_adapter, target_conditioning
from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.continual import adapter_fingerprint, load_init_adapter, read_init_adapter
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.clips import MAX_CLIPS, MIN_CLIPS, read_target_clips, split_heldout
from tts_adapt.cache import cache_dir as default_cache_dir
from tts_adapt.curvature.storage import read_header
from tts_adapt.device import check_precision, resolve_device
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.synthesis import default_model_dir
from tts_adapt.models.trainer import Callback, LoopConfig, Trainer, read_checkpoint, validation_loss

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
MAX_BAD_STEPS = 5


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch over ``n`` clips, in an order fixed by (seed, epoch); fewer clips than a
    batch make one batch of all of them."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    size = min(batch_size, n)
    return [order[i:i + size] for i in range(0, n - size + 1, size)]


class Curve(Callback):
    """The run's learning curve: one row per step (loss, each loss term, validation loss when measured)."""

    state_key = "curve"

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, row, parts):
        self.rows.append(row)

    def state_dict(self):
        return {"rows": json.dumps(self.rows)}

    def load_state_dict(self, state):
        self.rows = json.loads(state.get("rows", "[]"))


class StepListener(Callback):
    """Calls ``on_step(step, total_steps, row)`` after every step; a False return cancels the run."""

    def __init__(self, on_step: Callable[[int, int, dict], bool], total_steps: int):
        self.on_step, self.total_steps = on_step, total_steps

    def on_train_batch_end(self, trainer, row, parts):
        return self.on_step(trainer.step, self.total_steps, row)


class DivergedError(RuntimeError):
    """Training ended on non-finite losses before any finite validation loss: there is nothing to save."""


def clips_fingerprint(utts) -> str:
    """sha256 over the clips' audio bytes and transcripts, in order: which recordings a run trained on."""
    h = hashlib.sha256()
    for u in utts:
        h.update(Path(u.audio_path).read_bytes())
        h.update(u.text.encode())
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resumable_state(out: Path, resume: bool, config: AdaptConfig) -> dict | None:
    """The interrupted run's state to resume, after refusing what cannot be resumed or would be overwritten."""
    path = out / CHECKPOINT_DIR / STATE_FILE
    if resume and not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to resume")
    if not resume and (out / "adapter_config.json").is_file():
        raise FileExistsError(f"{out} already holds an adapter; choose another --out (or --resume an interrupted run)")
    if not resume:
        return None
    state = read_checkpoint(path)
    saved = json.loads(state["settings"])
    if not config.same_run(saved.get("config")):
        raise ValueError(f"{path.parent}: the interrupted run used other settings ({saved.get('config')}); "
                         "resume with the same ones")
    return state


def _check_same_run(state: dict | None, identity: dict, out: Path) -> None:
    """Refuse to resume on other data, another base model or another curvature than the interrupted run's."""
    if state is None:
        return
    saved = json.loads(state["settings"]).get("identity", {})
    what = {"base_model": "base model", "curvature": "curvature file", "train_clips": "target clips",
            "val_clips": "validation clips", "replay": "replay data", "init_adapter": "initial adapter"}
    changed = [what[k] for k in what if saved.get(k) != identity.get(k)]
    if changed:
        raise ValueError(f"{out / CHECKPOINT_DIR}: the interrupted run used another {', another '.join(changed)}; "
                         "resume with the same ones, or start a new run in another --out")


def _check_writable(out: Path) -> bool:
    """Make sure ``out`` can be written before any work; returns whether this call created it."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{out}: cannot write the adapter there ({err.strerror or err})") from None
    return created


def _finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None, so that run.json stays valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def adapt(target_dir: str | Path, out: str | Path, model: str | Path | None = None,
          config: AdaptConfig = AdaptConfig(), *, curvature: str | Path | None = None,
          targets: list[str] | None = None, resume: bool = False, val_dir: str | Path | None = None,
          cache_dir: str | Path | None = None, progress: bool = True, stop_after: int | None = None,
          min_clips: int = MIN_CLIPS, max_clips: int | None = MAX_CLIPS,
          on_step: Callable[[int, int, dict], bool] | None = None, device: str | None = "auto",
          precision: str = "fp32", replay_data: str | Path | None = None,
          init_adapter: str | Path | None = None) -> dict:
    """Fine-tune LoRA on the target clips; returns the run record (also written to ``out/run.json``).

    ``stop_after`` ends this call after that many steps, leaving a resumable
    checkpoint (as an interruption would). ``min_clips`` is the fewest usable target
    clips accepted, ``max_clips`` the most used (the first ones; ``None``: all).
    ``on_step(step, total_steps, row)`` is called after every optimizer
    step with that step's curve row; returning ``False`` ends the run there with
    ``stopped="cancelled"`` (the adapter of the best validation so far is saved; before the first
    validation nothing is, and the record returned has ``status="cancelled"``).

    Nothing is saved from a run that never reached a finite validation loss (:class:`DivergedError`);
    a run that diverges after one keeps the best validation's adapter and says so in ``stopped``.
    A refused run leaves ``out`` as it was (a folder this call created is removed again).

    ``device`` (a ``--device`` value: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and ``precision``
    (``fp32``, ``bf16``, ``fp16``; the penalty stays fp32) say where and how the adapter trains; a run may
    resume on another device. The adapter's files are the same wherever it was trained.

    ``replay_data`` is the base model's pretraining corpus (the folder ``fit-curvature --data`` reads) for a
    strategy that replays its utterances (``needs_replay_data``: ilora); such a strategy refuses to run without.

    ``init_adapter`` is an adapter folder of the same base model, rank, alpha and target layers to continue from:
    its LoRA weights are loaded after the strategy wraps the model (:mod:`tts_adapt.adapt.continual`; the target
    keeps its own conditioning, penalties stay anchored at the base model).
    """
    if max_clips is not None and max_clips < min_clips:
        raise ValueError(f"max_clips ({max_clips}) is below min_clips ({min_clips})")
    strategy_cls = get_strategy(config.strategy)
    if strategy_cls.needs_curvature:
        if curvature is None:
            raise ValueError(f"strategy {config.strategy!r} needs --curvature FILE (fit it with tts-adapt "
                             f"fit-curvature --method {strategy_cls.curvature_method})")
        method = read_header(curvature).get("method")
        if method not in strategy_cls.curvature_methods:
            raise ValueError(f"{curvature}: a {method} curvature file; strategy {config.strategy!r} needs a "
                             f"{' or '.join(strategy_cls.curvature_methods)} one (tts-adapt fit-curvature --method "
                             f"{strategy_cls.curvature_method})")
    elif curvature is not None:
        log.warning("strategy %s does not use the curvature file %s", config.strategy, curvature)
    if strategy_cls.needs_replay_data and replay_data is None:
        raise ValueError(f"strategy {config.strategy!r} needs --replay-data DIR: the base model's pretraining corpus "
                         "(e.g. work/corpus, built by tts-adapt quickstart), whose utterances it replays")
    if replay_data is not None and not strategy_cls.needs_replay_data:
        log.warning("strategy %s replays no pretraining utterances; --replay-data %s is not used", config.strategy,
                    replay_data)
    out = Path(out)
    t0 = time.time()
    device = resolve_device(device)
    precision = check_precision(precision, device)
    state = _resumable_state(out, resume, config)
    created = _check_writable(out)
    try:
        run = _adapt(target_dir, out, model, config, strategy_cls, curvature, targets, state, val_dir, cache_dir,
                     progress, stop_after, min_clips, max_clips, on_step, t0, device, precision, replay_data,
                     init_adapter)
        if created and run.get("status") == "cancelled":
            shutil.rmtree(out, ignore_errors=True)
        return run
    except (Exception, KeyboardInterrupt) as err:
        # an interrupted run keeps its checkpoint to resume from; anything else leaves no trace
        if created and not isinstance(err, KeyboardInterrupt):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _adapt(target_dir, out: Path, model, config: AdaptConfig, strategy_cls, curvature, targets, state, val_dir,
           cache_dir, progress, stop_after, min_clips, max_clips, on_step, t0, device, precision,
           replay_data=None, init_adapter=None) -> dict:
    model_dir = Path(model) if model else default_model_dir()
    backend = TTSBackend.from_pretrained(model_dir)
    base_fingerprint = backend.fingerprint()
    clips, report = read_target_clips(target_dir, backend.audio.sample_rate, min_clips=min_clips,
                                      max_clips=max_clips if max_clips is not None else 10 ** 9)
    if val_dir:
        val_clips, _ = read_target_clips(val_dir, backend.audio.sample_rate, min_clips=1)
        train_clips = clips
    else:
        train_clips, val_clips = split_heldout(clips, seed=config.seed)
    for note in report.notes:
        log.info("note: %s", note)
    identity = {"base_model": base_fingerprint, "train_clips": clips_fingerprint(train_clips),
                "val_clips": clips_fingerprint(val_clips),
                "curvature": file_fingerprint(curvature) if strategy_cls.needs_curvature else None}
    init = None
    if init_adapter is not None:  # checked against the base model before the target joins its speakers
        init = read_init_adapter(init_adapter, backend)
        identity["init_adapter"] = adapter_fingerprint(init.path)
    replay = None
    if strategy_cls.needs_replay_data:  # before the target joins the speakers: the pool may add speakers
        from tts_adapt.adapt.replay import read_replay_pool

        replay = read_replay_pool(replay_data, backend, num_utterances=config.replay_pool, seed=config.seed,
                                  cache_dir=default_cache_dir(cache_dir), progress=progress)
        identity["replay"] = replay.fingerprint
    _check_same_run(state, identity, out)

    curv = None
    if strategy_cls.needs_curvature:
        from tts_adapt.curvature import Curvature

        curv = Curvature.load(curvature, backend)

    d_vec = target_conditioning(backend, train_clips)
    trainable_rows = add_target_speaker(backend, d_vec)
    cache = default_cache_dir(cache_dir)
    feats = backend.extract_features(train_clips, cache, report=report, progress=progress)
    val_feats = backend.extract_features(val_clips, cache, report=report, progress=progress)
    for f in feats + val_feats:
        f.speaker = TARGET_NAME

    targets = targets or (list(curv.targets) if curv is not None else backend.lora_targets())
    strategy = strategy_cls.from_config(config, curv)
    if replay is not None:
        strategy.use_replay(replay)
    strategy.wrap(backend.model, targets, trainable_rows)
    loaded = load_init_adapter(strategy.model, init, targets, config.rank, config.alpha) if init else None
    backend.to(device)  # after wrapping: the LoRA weights move with the layers they belong to
    params = strategy.trainable_parameters()
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
    torch.manual_seed(config.seed)
    curve = Curve()
    callbacks = [strategy, curve] + ([StepListener(on_step, config.steps)] if on_step is not None else [])
    trainer = Trainer(
        backend.model, params, optimizer, backend.loss,
        epoch_batches=lambda epoch: shuffled_batches(len(feats), config.batch_size, config.seed, epoch),
        make_batch=lambda idx: backend.collate([feats[i] for i in idx]),
        config=LoopConfig(steps=config.steps, checkpoint_every=config.checkpoint_every, val_every=config.val_every,
                          patience=config.patience, keep_best=True, max_bad_steps=MAX_BAD_STEPS),
        validate=lambda: validation_loss(backend, val_feats, config.batch_size),
        checkpoint_path=out / CHECKPOINT_DIR / STATE_FILE, callbacks=callbacks,
        settings={"config": config.to_dict(), "identity": identity}, progress=progress,
        desc=f"adapting ({config.strategy})", device=device, precision=precision)
    if state is not None:
        trainer.load_state_dict(state)
    stopped = trainer.fit(stop_after=stop_after)
    if stopped == "interrupted":
        return {"status": "interrupted", "step": trainer.step}
    if trainer.best is None and stopped == "cancelled":  # nothing validated yet: nothing to keep
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        return {"status": "cancelled", "stopped": stopped, "steps": trainer.step}
    if trainer.best is None:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # a diverged state is not worth resuming
        why = f"{stopped} at step {trainer.step}" if stopped != "steps" else "every validation loss was non-finite"
        raise DivergedError(f"{out}: training diverged ({why}) before any finite validation loss, so nothing was "
                            f"saved; lower --lr (now {config.lr:g}) or --lam (now {config.lam:g})")
    if stopped == "non-finite loss":
        log.warning("training diverged at step %d; the adapter saved is the best validation's (step %d, loss %.4f)",
                    trainer.step, trainer.best_step, trainer.best_val)
    trainer.restore_best()
    strategy.before_save()
    run = {
        "tts_adapt_version": __version__, "base_model": str(model_dir), "config": config.to_dict(),
        "curvature": str(curvature) if curvature else None, "targets": list(targets),
        "replay_data": str(replay_data) if replay is not None else None,
        "target_dir": str(target_dir), "train_clips": len(feats), "val_clips": len(val_feats),
        "train_seconds_of_audio": round(sum(f.mel.shape[0] for f in feats) * backend.audio.hop_length
                                        / backend.audio.sample_rate, 1),
        "steps": trainer.step, "stopped": stopped, "best_val_loss": trainer.best_val, "best_step": trainer.best_step,
        "curve": curve.rows, "wall_seconds": round(time.time() - t0, 1), "input_report": report.summary(),
        "trainable_parameters": sum(p.numel() for p in params.values()),
        "device": device.type, "precision": precision,
        "init_adapter": loaded.to_dict() if loaded is not None else None,
        **strategy.run_record(),  # the strategy's own entries (selective: its active blocks)
    }
    save_adapter(out, strategy.model, d_vec, _finite_or_none(run), base_fingerprint=base_fingerprint,
                 targets=targets)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # also temp files a killed run left behind
    return run
