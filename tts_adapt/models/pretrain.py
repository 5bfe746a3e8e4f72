"""Pretraining the multi-speaker base model on CPU: resumable, logged, data-parallel.

Run state lives in the output folder:

    config.json, model.pth, tts_adapt.json, speakers.safetensors   the model (always usable)
    trainer_state.pt      optimizer, scheduler, step, data position, RNG states (exact resume)
    pretrain.json         the PretrainConfig of the run
    train_log.csv         one row per logged step (losses, learning rate, wall time)

Data parallelism: under ``torchrun --nproc_per_node N`` every process takes
``batch_size / N`` items of each global batch and gradients are averaged with
``all_reduce`` (gloo on CPU); only rank 0 writes files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tts_adapt.data.audio import AudioConfig
from tts_adapt.data.readers import read_dataset
from tts_adapt.data.samples import InputReport, Utterance
from tts_adapt.io import atomic_path, write_json_atomic
from tts_adapt.models.base import TTSBackend, get_backend
from tts_adapt.models.features import FeatureStats, UtteranceFeatures, extract_features
from tts_adapt.models.pretrain_config import EARLIER_DEFAULTS, PretrainConfig
from tts_adapt.models.speakers import SpeakerTable, speaker_d_vectors

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"
MAX_BAD_STEPS = 10
# settings a resumed run may change: its length, and with it where the cool-down starts
RESCHEDULABLE = ("steps", "cooldown_steps", "checkpoint_every", "log_every")
LOG_FIELDS = ("step", "epoch", "loss", "loss_spec", "log_mle", "loss_dur", "loss_pitch", "loss_aligner",
              "loss_binary_alignment", "val_loss", "lr", "seconds", "utterances_per_s")


# --------------------------------------------------------------------------- data
def split_utterances(utts: list[Utterance], val_count: int, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """Training and validation utterances. The embedded corpus has fixed splits
    (pretrain/train and pretrain/heldout); other datasets lose a seeded random few."""
    if any(u.split and "/" in u.split for u in utts):
        train = [u for u in utts if u.split == "pretrain/train"]
        val = [u for u in utts if u.split == "pretrain/heldout"]
        return train, val[:: max(1, len(val) // val_count)][:val_count] if val else []
    rng = random.Random(seed)
    idx = list(range(len(utts)))
    rng.shuffle(idx)
    val_idx = set(idx[: min(val_count, len(utts) // 10)])
    return [u for i, u in enumerate(utts) if i not in val_idx], [u for i, u in enumerate(utts) if i in val_idx]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length (less padding), in a random order fixed by (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    bucket = batch_size * 16
    batches = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size) if
                    len(chunk[i:i + batch_size]) == batch_size]
    return [batches[i] for i in rng.permutation(len(batches))]


def lr_factor(step: int, warmup: int, total: int | None = None, cooldown: int = 0) -> float:
    """Learning-rate multiplier: linear warm-up, inverse square-root decay and, over the
    last ``cooldown`` of ``total`` steps, a linear fall to zero. The cool-down leaves the
    schedule before it unchanged, so a run can be branched into a cool-down from any
    checkpoint of a longer run and still be reproduced from scratch by one config."""
    def noam(s: int) -> float:
        s = max(s, 1)
        return min(s / warmup, math.sqrt(warmup / s))

    if cooldown and total is not None and step > total - cooldown:
        return noam(total - cooldown) * max(total - step, 0) / cooldown
    return noam(step)


# --------------------------------------------------------------------------- distributed
def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group when started by torchrun (gloo: CPU); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        # N processes x the default thread pool oversubscribe the cores, and spinning
        # OpenMP threads then slow every process down many times over
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return _dist_info()


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


# --------------------------------------------------------------------------- the run
def prepare(data: str | Path, out: Path, config: PretrainConfig, *, layout: str = "auto",
            cache_dir: Path | None = None, workers: int = 1, progress: bool = True, report: InputReport | None = None):
    """Read the data, speaker table and features; build (or load) the backend. Returns
    (backend, train features, validation features, report)."""
    report = report or InputReport()
    kwargs = {"speaker_sets": ["pretrain"]} if layout in ("auto", "tts_adapt") and (Path(data) / "manifest.csv").is_file() \
        else {}
    audio = AudioConfig(n_mels=config.n_mels, f0_method=config.f0_method)
    utts, report = read_dataset(data, layout, report=report, workers=workers, progress=progress, **kwargs)
    if not utts:
        raise ValueError(f"{data}: no usable utterances for pretraining\n{report.summary()}")
    utts = [u for u in utts if (u.duration or 0) <= config.max_seconds]
    train_utts, val_utts = split_utterances(utts, config.val_utterances, config.seed)
    speakers_path = out / "speakers.safetensors"
    if speakers_path.is_file():
        speakers = SpeakerTable.load(out)
    elif config.conditioning == "d_vector":
        vecs = speaker_d_vectors(train_utts, progress=progress)
        names = sorted(vecs)
        speakers = SpeakerTable("d_vector", names, torch.from_numpy(np.stack([vecs[n] for n in names])).float())
    else:
        speakers = SpeakerTable("id_table", sorted({u.speaker for u in train_utts}))
    if not speakers_path.is_file() and _dist_info()[0] == 0:
        out.mkdir(parents=True, exist_ok=True)
        speakers.save(out)
    backend_cls = get_backend(config.backend)
    torch.manual_seed(config.seed)
    probe = backend_cls.create(audio, FeatureStats(torch.zeros(audio.n_mels), torch.ones(audio.n_mels), 0.0, 1.0),
                               speakers, size=config.size)
    cache = cache_dir or Path(os.environ.get("TTS_ADAPT_CACHE", Path.home() / ".cache" / "tts_adapt"))
    train = extract_features(train_utts, cache, audio, probe.text_to_ids, probe.text_config, report=report,
                             workers=workers, progress=progress)
    val = extract_features(val_utts, cache, audio, probe.text_to_ids, probe.text_config, report=report,
                           workers=workers, progress=progress) if val_utts else []
    if (out / "tts_adapt.json").is_file() and (out / "model.pth").is_file():
        backend = TTSBackend.from_pretrained(out)
    else:
        stats = FeatureStats.compute(train)
        torch.manual_seed(config.seed)
        backend = backend_cls.create(audio, stats, speakers, size=config.size)
        if config.init_from:
            init_weights(backend, config.init_from)
    return backend, train, val, report


def init_weights(backend: TTSBackend, source: str | Path) -> None:
    """Start ``backend`` from the weights of the model in ``source`` (a fine-tuning start, as coqui's
    ``--restore_path``); what that model was trained for is kept in ``backend.info["init_from"]``."""
    source = Path(source)
    try:
        parent = TTSBackend.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"init_from: {err}") from None
    if parent.name != backend.name:
        raise ValueError(f"init_from {source}: a {parent.name} model cannot start a {backend.name} run")
    own = backend.model.state_dict()
    theirs = parent.model.state_dict()
    mismatched = sorted(k for k in own if k not in theirs or theirs[k].shape != own[k].shape)
    if mismatched:
        raise ValueError(f"init_from {source}: {len(mismatched)} weight(s) do not fit this run's model "
                         f"(e.g. {mismatched[0]}); use the same size, mel bands and speaker conditioning")
    backend.model.load_state_dict({k: theirs[k] for k in own})
    backend.info["init_from"] = {"path": str(source), **{k: parent.info[k] for k in
                                                          ("steps", "wall_seconds", "pretrain", "init_from")
                                                          if k in parent.info}}


@torch.no_grad()
def validation_loss(backend: TTSBackend, features: list[UtteranceFeatures], batch_size: int) -> float:
    if not features:
        return float("nan")
    was = backend.model.training
    backend.model.eval()
    total, n = 0.0, 0
    for i in range(0, len(features), batch_size):
        chunk = features[i:i + batch_size]
        loss, _ = backend.loss(backend.collate(chunk))
        total += float(loss) * len(chunk)
        n += len(chunk)
    backend.model.train(was)
    return total / n


def pretrain(data: str | Path, out: str | Path, config: PretrainConfig = PretrainConfig(), *, layout: str = "auto",
             cache_dir: Path | None = None, workers: int = 1, progress: bool = True,
             stop_after: int | None = None, max_minutes: float | None = None) -> TTSBackend:
    """Train (or resume training) a base model on ``data`` into ``out``.

    ``stop_after`` ends this call after that many steps, ``max_minutes`` after that
    much wall time (with a checkpoint; the run stays resumable), to fit a run into
    sittings or to compare candidates at equal CPU time.
    """
    out = Path(out)
    rank, world = init_distributed()
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of processes ({world})")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        previous = out / "pretrain.json"
        if previous.is_file() and (out / STATE_FILE).is_file():  # a run that got as far as a checkpoint
            old = {**EARLIER_DEFAULTS, **json.loads(previous.read_text())}
            changed = {k: (old.get(k), v) for k, v in config.to_dict().items()
                       if k not in RESCHEDULABLE and old.get(k) != v}
            if changed:
                raise ValueError(f"{out} holds a run with another configuration ({changed}); "
                                 "resume with the same settings or choose another output folder")
        write_json_atomic(previous, config.to_dict())
    # rank 0 computes speaker embeddings and features first; the others then read them from
    # the run folder and the feature cache instead of repeating the work
    if rank == 0:
        backend, train, val, report = prepare(data, out, config, layout=layout, cache_dir=cache_dir,
                                              workers=workers, progress=progress)
    if world > 1:
        dist.barrier()
    if rank > 0:
        backend, train, val, report = prepare(data, out, config, layout=layout, cache_dir=cache_dir,
                                              workers=1, progress=False)
    if rank == 0 and not report.ok:
        log.warning("%s", report.summary())
    model = backend.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.steps, config.cooldown_steps))
    step, epoch, position = 0, 0, 0
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
        wall_before = float(state.get("wall_seconds", 0.0))
        torch.set_rng_state(state["rng_torch"][rank] if state["rng_torch"].dim() > 1 else state["rng_torch"])
        if rank == 0:
            log.info("resuming at step %d", step)
    else:
        torch.manual_seed(config.seed + 1000 + rank)
        wall_before = 0.0
    backend.info.update({"train_utterances": len(train), "val_utterances": len(val),
                         "train_hours": round(sum(f.mel.shape[0] for f in train) * backend.audio.hop_length
                                              / backend.audio.sample_rate / 3600, 3),
                         "speakers": len(backend.speakers.names), "data": str(data)})

    lengths = [f.mel.shape[0] for f in train]
    per_rank = config.batch_size // world
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, desc="pretraining", unit="step", disable=not progress or rank > 0)
    t_start, seen, bad_steps = time.time(), 0, 0
    log_rows: list[dict] = []
    batches = epoch_batches(lengths, config.batch_size, config.seed, epoch)
    if not batches:  # otherwise the loop below would start epoch after empty epoch forever
        raise ValueError(f"{len(train)} training utterance(s) do not fill one batch of {config.batch_size}; "
                         "use a smaller batch_size or more data")
    while step < end:
        if position >= len(batches):
            epoch, position = epoch + 1, 0
            batches = epoch_batches(lengths, config.batch_size, config.seed, epoch)
        idx = batches[position][rank * per_rank:(rank + 1) * per_rank]
        position += 1
        batch = backend.collate([train[i] for i in idx])
        backend.set_training_progress(step)
        loss, parts = backend.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        finite = torch.tensor(float(torch.isfinite(loss)))
        if world > 1:  # every rank must skip the same steps, or their all_reduce calls fall out of step
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite:
            bad_steps += 1
            if rank == 0:
                log.warning("step %d: non-finite loss, step skipped (%d in a row)", step, bad_steps)
            if bad_steps >= MAX_BAD_STEPS:
                raise FloatingPointError(f"{bad_steps} non-finite losses in a row at step {step}; the last "
                                         f"checkpoint in {out} is intact (lower --lr and resume)")
            continue
        bad_steps = 0
        loss.backward()
        _average_gradients(model, world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        seen += len(idx) * world
        bar.update(1)
        if max_minutes is not None:
            out_of_time = torch.tensor(float(time.time() - t_start >= 60.0 * max_minutes))
            if world > 1:  # every rank must end at the same step
                dist.all_reduce(out_of_time, op=dist.ReduceOp.MAX)
            if out_of_time:
                end = step
        bar.set_postfix(loss=f"{parts['loss']:.3f}", spec=f"{parts.get('loss_spec', 0):.3f}")
        if step % config.log_every == 0 or step == end:
            elapsed = time.time() - t_start
            log_rows.append({**{k: parts.get(k, "") for k in LOG_FIELDS}, "step": step, "epoch": epoch,
                             "lr": scheduler.get_last_lr()[0], "seconds": round(wall_before + elapsed, 1),
                             "utterances_per_s": round(seen / max(elapsed, 1e-9), 2), "val_loss": ""})
        if step % config.checkpoint_every == 0 or step == end:
            val_loss = validation_loss(backend, val, config.batch_size) if rank == 0 else float("nan")
            if log_rows:
                log_rows[-1]["val_loss"] = round(val_loss, 4)
            _checkpoint(backend, optimizer, scheduler, out, step, epoch, position, config, rank, world, log_rows,
                        wall_before + time.time() - t_start)
            log_rows = []
    bar.close()
    if world > 1:
        dist.barrier()
    return backend


def _checkpoint(backend, optimizer, scheduler, out: Path, step, epoch, position, config, rank, world, log_rows,
                wall_seconds: float):
    """Model folder + trainer state, written atomically by rank 0 (RNG states gathered from all ranks)."""
    rng = torch.get_rng_state()
    if world > 1:
        gathered = [torch.empty_like(rng) for _ in range(world)]
        dist.all_gather(gathered, rng)
        rng = torch.stack(gathered)
    if rank != 0:
        return
    backend.info.update({"steps": step, "epoch": epoch, "pretrain": config.to_dict(),
                         "wall_seconds": round(wall_seconds, 1), "processes": world})
    backend.save_pretrained(out, step=step)
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "epoch": epoch, "position": position, "rng_torch": rng, "wall_seconds": wall_seconds}, tmp)
    path = out / "train_log.csv"
    fields = list(LOG_FIELDS)
    if path.is_file():  # keep the columns of the existing log (a run may span versions)
        with open(path, newline="", encoding="utf-8") as fh:
            fields = next(csv.reader(fh), fields)
    with open(path, "a", newline="", encoding="utf-8") as fh:  # append-only: a crash loses at most these rows
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if fh.tell() == 0:
            writer.writeheader()
        writer.writerows(log_rows)
