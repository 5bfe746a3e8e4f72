"""Pretraining the multi-speaker base model: resumable, logged, data-parallel, on CPUs or GPUs.

Run state lives in the output folder:

    config.json, model.pth, tts_adapt.json, speakers.safetensors   the model (always usable)
    trainer_state.pt      the training loop's state: weights, optimizer, scheduler, step, data position,
                          RNG states of every process (exact resume; see tts_adapt.models.trainer)
    pretrain.json         the PretrainConfig of the run
    train_log.csv         one row per logged step (losses, learning rate, wall time)

The loop is the shared :class:`~tts_adapt.models.trainer.Trainer`; what is particular to pretraining
(the learning-rate schedule, the run folder and its log) is set up here. Data parallelism: under
``torchrun --nproc_per_node N`` every process takes ``batch_size / N`` items of each global batch and
``DistributedDataParallel`` averages the gradients (gloo on CPUs, NCCL on GPUs, one GPU per process);
only rank 0 writes files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tts_adapt.cache import cache_dir as default_cache_dir
from tts_adapt.data.audio import AudioConfig
from tts_adapt.data.readers import read_dataset
from tts_adapt.data.samples import InputReport, Utterance
from tts_adapt.distributed import dist_info, init_distributed, process_device
from tts_adapt.io import write_json_atomic
from tts_adapt.models.backends import get_backend
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.features import FeatureStats, extract_features
from tts_adapt.models.pretrain_config import EARLIER_DEFAULTS, PretrainConfig
from tts_adapt.models.speakers import SpeakerTable, speaker_d_vectors
from tts_adapt.models.trainer import Callback, Collator, LoopConfig, Trainer, read_checkpoint, validation_loss

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
    if not speakers_path.is_file() and dist_info()[0] == 0:
        out.mkdir(parents=True, exist_ok=True)
        speakers.save(out)
    backend_cls = get_backend(config.backend)
    torch.manual_seed(config.seed)
    probe = backend_cls.create(audio, FeatureStats(torch.zeros(audio.n_mels), torch.ones(audio.n_mels), 0.0, 1.0),
                               speakers, size=config.size)
    cache = default_cache_dir(cache_dir)
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


class BackendLoss(nn.Module):
    """The backend's training loss as a module, so that ``DistributedDataParallel`` can wrap it: DDP
    averages gradients only for what runs through its own forward, and coqui's ``train_step`` calls the
    model's forward from inside."""

    def __init__(self, backend: TTSBackend):
        super().__init__()
        self.backend = backend
        self.model = backend.model  # registered, so that DDP sees the parameters

    def forward(self, batch):
        return self.backend.loss(batch)


class PretrainLog(Callback):
    """The run folder at every checkpoint: the model (always usable) and the new rows of train_log.csv
    (every ``log_every`` steps and the last one; append-only, so a crash loses at most those rows)."""

    def __init__(self, backend: TTSBackend, out: Path, config: PretrainConfig, data: str | Path):
        self.backend, self.out, self.config, self.data = backend, out, config, data
        self.rows: list[dict] = []

    def on_train_start(self, trainer):
        self.t_start, self.seen = time.time(), 0

    def on_batch_start(self, trainer, batch):
        self.backend.set_training_progress(trainer.step)

    def on_after_optimizer_step(self, trainer):
        self.seen += self.config.batch_size

    def on_train_batch_end(self, trainer, row, parts):
        if trainer.step % self.config.log_every and not trainer.stopping:
            return
        elapsed = time.time() - self.t_start
        self.rows.append({**{k: parts.get(k, "") for k in LOG_FIELDS}, "step": trainer.step, "epoch": trainer.epoch,
                          "lr": trainer.scheduler.get_last_lr()[0], "seconds": round(trainer.wall_seconds, 1),
                          "utterances_per_s": round(self.seen / max(elapsed, 1e-9), 2),
                          "val_loss": round(row["val_loss"], 4) if "val_loss" in row else ""})

    def on_save_checkpoint(self, trainer):
        self.backend.info.update({"steps": trainer.step, "epoch": trainer.epoch, "pretrain": self.config.to_dict(),
                                  "wall_seconds": round(trainer.wall_seconds, 1), "processes": trainer.world,
                                  "device": trainer.device.type, "precision": trainer.precision})
        self.backend.save_pretrained(self.out, step=trainer.step)
        path = self.out / "train_log.csv"
        fields = list(LOG_FIELDS)
        if path.is_file():  # keep the columns of the existing log
            with open(path, newline="", encoding="utf-8") as fh:
                fields = next(csv.reader(fh), fields)
        with open(path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if fh.tell() == 0:
                writer.writeheader()
            writer.writerows(self.rows)
        self.rows = []


def _check_resumable(out: Path, config: PretrainConfig) -> None:
    """Refuse to continue a run in ``out`` with other settings than its own (the length may change)."""
    previous = out / "pretrain.json"
    if previous.is_file() and (out / STATE_FILE).is_file():  # a run that got as far as a checkpoint
        old = {**EARLIER_DEFAULTS, **json.loads(previous.read_text())}
        changed = {k: (old.get(k), v) for k, v in config.to_dict().items()
                   if k not in RESCHEDULABLE and old.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds a run with another configuration ({changed}); "
                             "resume with the same settings or choose another output folder")


def pretrain(data: str | Path, out: str | Path, config: PretrainConfig = PretrainConfig(), *, layout: str = "auto",
             cache_dir: Path | None = None, workers: int = 1, progress: bool = True,
             stop_after: int | None = None, max_minutes: float | None = None, device: str | None = "auto",
             precision: str = "fp32", loader_workers: int = 0) -> TTSBackend:
    """Train (or resume training) a base model on ``data`` into ``out``.

    ``stop_after`` ends this call after that many steps, ``max_minutes`` after that
    much wall time (with a checkpoint; the run stays resumable), to fit a run into
    sittings or to compare candidates at equal CPU time. ``device`` (``--device``; under torchrun on GPUs
    each process takes the GPU of its ``LOCAL_RANK``) and ``precision`` say where and how the model
    trains; ``workers`` processes extract features, ``loader_workers`` make batches ahead of the loop.
    A run may change device and precision when it resumes: they change the arithmetic, not the run.
    """
    out = Path(out)
    device = process_device(device)
    rank, world = init_distributed(device)
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of processes ({world})")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _check_resumable(out, config)
        write_json_atomic(out / "pretrain.json", config.to_dict())
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
    backend.to(device)
    model = backend.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.steps, config.cooldown_steps))
    backend.info.update({"train_utterances": len(train), "val_utterances": len(val),
                         "train_hours": round(sum(f.mel.shape[0] for f in train) * backend.audio.hop_length
                                              / backend.audio.sample_rate / 3600, 3),
                         "speakers": len(backend.speakers.names), "data": str(data)})
    lengths = [f.mel.shape[0] for f in train]
    if not epoch_batches(lengths, config.batch_size, config.seed, 0):
        raise ValueError(f"{len(train)} training utterance(s) do not fill one batch of {config.batch_size}; "
                         "use a smaller batch_size or more data")
    per_rank = config.batch_size // world
    loss_fn = DistributedDataParallel(BackendLoss(backend), device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True) if world > 1 else backend.loss
    trainer = Trainer(
        model, dict(model.named_parameters()), optimizer, loss_fn,
        epoch_batches=lambda epoch: epoch_batches(lengths, config.batch_size, config.seed, epoch),
        make_batch=Collator(backend, train, slice(rank * per_rank, (rank + 1) * per_rank)),
        config=LoopConfig(steps=config.steps, checkpoint_every=config.checkpoint_every,
                          val_every=config.checkpoint_every, grad_clip=config.grad_clip,
                          max_bad_steps=MAX_BAD_STEPS, raise_on_non_finite=True),
        scheduler=scheduler, validate=lambda: validation_loss(backend, val, config.batch_size),
        checkpoint_path=out / STATE_FILE, callbacks=[PretrainLog(backend, out, config, data)],
        settings=config.to_dict(), progress=progress, desc="pretraining", device=device, precision=precision,
        workers=loader_workers)
    state_path = out / STATE_FILE
    if state_path.is_file():
        trainer.load_state_dict(read_checkpoint(state_path))
        if rank == 0:
            log.info("resuming at step %d", trainer.step)
    else:
        torch.manual_seed(config.seed + 1000 + rank)
    trainer.fit(stop_after=stop_after, max_minutes=max_minutes)
    if world > 1:
        dist.barrier()
    return backend
