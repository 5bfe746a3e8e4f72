"""One training loop, shared by pretraining and adaptation, with callbacks at named moments.

The loop owns the order of events; everything that differs between pretraining, adaptation and the
adaptation strategies is a :class:`Callback` (as Lightning's callbacks, and peft's tuners for the
strategies). One optimizer step::

    batch = make_batch(next indices)          callbacks.on_batch_start(trainer, batch)
    loss, parts = loss_fn(batch)              terms = callbacks.loss_terms(trainer, batch)
    total = loss + Σ weight · term            (a non-finite total skips the step; too many in a row end the run)
    total.backward(); clip; optimizer.step(); scheduler.step()
                                              callbacks.on_after_optimizer_step(trainer)
    validation (every val_every steps and at the last step: best weights, early stopping)
                                              inside callbacks.validation_weights(trainer)
                                              callbacks.on_train_batch_end(trainer, row, parts)  (False: cancel)
    checkpoint (every checkpoint_every steps and when the loop stops)
                                              callbacks.on_save_checkpoint(trainer)

Device and precision. The loop runs where the model is (``device``, default the model's own): each batch
is made on the CPU (``make_batch``; in ``workers`` DataLoader processes, in page-locked memory for a GPU)
and moved there. At ``precision`` bf16 or fp16 the loss function runs under autocast (fp16 with a gradient
scaler); the callbacks' loss terms (the Laplace penalty) are computed outside it, in fp32, because they sum
many small products of curvature factors and weight updates that half precision would round away.

A checkpoint is one state dict (:meth:`Trainer.state_dict`) in one file written atomically: the trained
weights, the optimizer and scheduler (and gradient scaler), the loop's position, the RNG states of every
process and each callback's own state under its ``state_key``. Under torchrun the loss function is expected to be a
``DistributedDataParallel`` module (gradients are averaged there), every decision that ends or skips a
step is taken by all processes together, and only rank 0 validates and writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from tts_adapt.device import autocast, check_precision, grad_scaler, module_device, to_device
from tts_adapt.distributed import agree, dist_info, gather_rng_state, set_rng_state
from tts_adapt.io import atomic_path

log = logging.getLogger(__name__)
#: version of the checkpoint's layout; a file without it was written before the loop was shared
STATE_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (another layout, or unreadable)."""


@dataclass(frozen=True)
class LossTerm:
    """An extra term of the training loss: the loss is ``L + weight · value``; the row of the step logs
    ``value`` under ``name``."""

    name: str
    value: torch.Tensor
    weight: float


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs (the optimizer and the data are the caller's)."""

    steps: int
    checkpoint_every: int
    val_every: int = 0  #: 0: no validation
    grad_clip: float = 5.0
    patience: int | None = None  #: validations without improvement before stopping; None: never stop early
    min_improvement: float = 1e-4  #: a validation loss counts as better when it is lower by this much
    keep_best: bool = False  #: remember the weights of the best validation (see :meth:`Trainer.restore_best`)
    max_bad_steps: int = 5  #: non-finite losses in a row that end the run
    raise_on_non_finite: bool = False  #: end the run by FloatingPointError instead of ``"non-finite loss"``


class Callback:
    """Named moments of the loop. Every hook is a no-op here, so a callback overrides only what it needs.
    A callback with a ``state_key`` has its :meth:`state_dict` saved in the checkpoint under that key."""

    state_key: ClassVar[str | None] = None

    def on_train_start(self, trainer: "Trainer") -> None:
        """Before the first step of this call (also when resuming)."""

    def on_batch_start(self, trainer: "Trainer", batch) -> None:
        """Before the loss of ``batch`` is computed (``trainer.step`` steps done so far)."""

    def loss_terms(self, trainer: "Trainer", batch) -> Sequence[LossTerm]:
        """Terms added to the loss of this step."""
        return ()

    def on_after_optimizer_step(self, trainer: "Trainer") -> None:
        """Right after ``optimizer.step()`` (``trainer.step`` not yet counted up)."""

    def validation_weights(self, trainer: "Trainer") -> contextlib.AbstractContextManager:
        """A context in which the loop validates (and remembers the best weights): the weights being trained
        by default; e.g. an averaged copy swapped in for the duration."""
        return contextlib.nullcontext()

    def on_train_batch_end(self, trainer: "Trainer", row: dict, parts: dict) -> bool | None:
        """After the step and its validation. ``row``: step, loss, each loss term, val_loss when
        validated; ``parts``: the loss function's parts. ``trainer.stopping`` says whether this is the
        loop's last step and why. Returning False cancels the run after this step."""

    def on_save_checkpoint(self, trainer: "Trainer") -> None:
        """After the checkpoint file is written (on the process that writes files)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


def validation_loss(backend, features: Sequence, batch_size: int) -> float:
    """Mean loss of ``backend`` over ``features`` (eval mode, no gradients); NaN for no features."""
    if not features:
        return float("nan")
    was = backend.model.training
    backend.model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(features), batch_size):
            chunk = features[i:i + batch_size]
            loss, _ = backend.loss(backend.collate(chunk).to(backend.device))
            total += float(loss) * len(chunk)
    backend.model.train(was)
    return total / len(features)


class Collator:
    """``make_batch`` over features held in memory: the CPU batch of ``features[i]`` for the indices ``idx[part]``
    (a process's share of a global batch). Unlike a closure it pickles, without the model (which may carry
    hooks, and which collating does not need), so DataLoader workers started by spawn receive it too."""

    def __init__(self, backend, features: Sequence, part: slice = slice(None)):
        self.backend, self.features, self.part = backend, features, part

    def __call__(self, idx: list[int]):
        return self.backend.collate([self.features[i] for i in idx[self.part]])

    def __getstate__(self) -> dict:
        backend = copy.copy(self.backend)
        backend.model = None
        return {**self.__dict__, "backend": backend}


class _Batches(torch.utils.data.Dataset):
    """Item i: the batch of index list i (what a DataLoader's workers make ahead of the loop)."""

    def __init__(self, make_batch: Callable[[list[int]], Any], index_lists: list[list[int]]):
        self.make_batch, self.index_lists = make_batch, index_lists

    def __len__(self) -> int:
        return len(self.index_lists)

    def __getitem__(self, i: int):
        return self.make_batch(self.index_lists[i])


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the parallelism is across the workers; more threads would oversubscribe


def batch_stream(make_batch: Callable[[list[int]], Any], index_lists: list[list[int]], *, workers: int = 0,
                 pin_memory: bool = False):
    """The batches of ``index_lists`` in order: made in this process (``workers`` 0, lazily, one at a time)
    or by a :class:`~torch.utils.data.DataLoader` with ``workers`` processes, which makes the next batches
    while the model works on this one (``pin_memory``: in page-locked memory, for copies to a GPU)."""
    if workers <= 0:
        return (make_batch(idx) for idx in index_lists)
    # its own generator: a DataLoader seeds its workers from the global one otherwise, which would change the
    # training's random draws (dropout) with the number of workers
    return iter(torch.utils.data.DataLoader(_Batches(make_batch, index_lists), batch_size=None, shuffle=False,
                                            num_workers=workers, pin_memory=pin_memory,
                                            worker_init_fn=_one_thread, generator=torch.Generator()))


def read_checkpoint(path: str | Path) -> dict:
    """The state dict in a checkpoint file the loop wrote (loaded with ``weights_only``)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: a checkpoint of another layout (format {state.get('format')!r}, this "
                              f"version reads {STATE_FORMAT}); start a new run, from its weights if wanted")
    return state


class Trainer:
    """The loop over batches (see the module doc).

    ``params`` are the trained parameters by name (clipped together, saved in checkpoints and as best
    weights); ``loss_fn(batch) -> (loss, parts)``; ``epoch_batches(epoch)`` lists the index lists of an
    epoch and ``make_batch(indices)`` turns one into a batch; ``validate()`` returns a validation loss.
    ``settings`` (JSON-able) are stored in the checkpoint, for the caller to compare when resuming.
    """

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                 loss_fn: Callable, epoch_batches: Callable[[int], list[list[int]]],
                 make_batch: Callable[[list[int]], Any], config: LoopConfig, *,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 validate: Callable[[], float] | None = None, checkpoint_path: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), settings: dict | None = None, progress: bool = True,
                 desc: str = "training", device: torch.device | None = None, precision: str = "fp32",
                 workers: int = 0):
        keys = [cb.state_key for cb in callbacks if cb.state_key]
        if len(keys) != len(set(keys)):
            raise ValueError(f"two callbacks share a state key: {keys}")
        if config.val_every and validate is None:
            raise ValueError("val_every is set but there is no validate function")
        self.model, self.params, self.optimizer, self.scheduler = model, params, optimizer, scheduler
        self.loss_fn, self.epoch_batches, self.make_batch = loss_fn, epoch_batches, make_batch
        self.config, self.validate, self.callbacks = config, validate, list(callbacks)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.settings, self.progress, self.desc = settings or {}, progress, desc
        self.device = torch.device(device) if device is not None else module_device(model)
        self.precision = check_precision(precision, self.device)
        self.scaler = grad_scaler(self.device, self.precision)
        self.workers = workers
        self.rank, self.world = dist_info()
        self.step = self.epoch = self.position = 0
        self.best_val, self.bad_validations, self.best_step = math.inf, 0, 0
        self.best: dict[str, torch.Tensor] | None = None
        self.wall_seconds = 0.0  # over every sitting of the run
        self.stopping: str | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to resume exactly. Collective under torchrun (gathers the RNG states)."""
        return {"format": STATE_FORMAT, "step": self.step, "epoch": self.epoch, "position": self.position,
                "best_val": self.best_val, "bad_validations": self.bad_validations, "best": self.best,
                "best_step": self.best_step,
                "wall_seconds": self.wall_seconds, "settings": json.dumps(self.settings, sort_keys=True),
                "weights": {k: p.detach().clone() for k, p in self.params.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": gather_rng_state(self.device),
                "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key}}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.params) - set(state["weights"]))
        if missing:
            raise CheckpointError(f"the checkpoint has no weights for {len(missing)} trained parameter(s), e.g. "
                                  f"{missing[0]}; it was written by another run")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["weights"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        self.best_val, self.bad_validations = float(state["best_val"]), int(state["bad_validations"])
        self.best_step = int(state["best_step"])
        self.best, self.wall_seconds = state["best"], float(state["wall_seconds"])
        set_rng_state(state["rng"], self.device)
        saved = state["callbacks"]
        for cb in self.callbacks:
            if cb.state_key:
                cb.load_state_dict(saved.get(cb.state_key, {}))

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # on every process: the RNG states are gathered
        if self.rank != 0:
            return
        if self.checkpoint_path is not None:
            with atomic_path(self.checkpoint_path) as tmp:  # a kill -9 leaves the previous checkpoint
                torch.save(state, tmp)
        for cb in self.callbacks:
            cb.on_save_checkpoint(self)

    def restore_best(self) -> None:
        """Put the weights of the best validation back (kept with ``keep_best``)."""
        if self.best is not None:
            with torch.no_grad():
                for k, v in self.best.items():
                    self.params[k].copy_(v)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None, max_minutes: float | None = None) -> str:
        """Train up to ``config.steps`` (``stop_after`` more steps at most in this call, ``max_minutes`` of
        wall time); returns why the loop stopped: ``steps``, ``early stopping``, ``cancelled``, ``non-finite
        loss``, ``interrupted`` (``stop_after``) or ``time budget``. The last two leave a checkpoint to
        resume from."""
        cfg = self.config
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        t_start, wall_before = time.time(), self.wall_seconds
        for cb in self.callbacks:
            cb.on_train_start(self)
        self.model.train()
        batches = self.epoch_batches(self.epoch)
        if not batches:  # otherwise the loop would start epoch after empty epoch forever
            raise ValueError("the training data do not fill one batch")
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.desc, unit="step",
                   disable=not self.progress or self.rank > 0)
        stopped, bad_steps = "steps", 0
        stream = self._stream(batches)
        while self.step < end:
            if self.position >= len(batches):
                self.epoch, self.position = self.epoch + 1, 0
                batches = self.epoch_batches(self.epoch)
                stream = self._stream(batches)
            batch = to_device(next(stream), self.device, non_blocking=True)
            self.position += 1
            for cb in self.callbacks:
                cb.on_batch_start(self, batch)
            with autocast(self.device, self.precision):
                loss, parts = self.loss_fn(batch)
            loss = loss.float()
            terms = [t for cb in self.callbacks for t in cb.loss_terms(self, batch)]
            total = loss
            for t in terms:
                total = total + t.weight * t.value
            self.optimizer.zero_grad(set_to_none=True)
            if not agree(bool(torch.isfinite(total)), every=True):  # every process skips the same steps
                bad_steps += 1
                if self.rank == 0:
                    log.warning("step %d: non-finite loss (%s), step skipped (%d in a row)", self.step,
                                float(total.detach()), bad_steps)
                if bad_steps >= cfg.max_bad_steps:
                    if cfg.raise_on_non_finite:
                        raise FloatingPointError(
                            f"{bad_steps} non-finite losses in a row at step {self.step}; the last checkpoint "
                            f"({self.checkpoint_path}) is intact (lower the learning rate and resume)")
                    stopped = "non-finite loss"
                    break
                continue
            bad_steps = 0
            if self.scaler is None:
                total.backward()
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.grad_clip)
                self.optimizer.step()
            else:  # fp16: scaled backward; the step is skipped by the scaler when a gradient overflowed
                self.scaler.scale(total).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            for cb in self.callbacks:
                cb.on_after_optimizer_step(self)
            self.step += 1
            bar.update(1)
            row = {"step": self.step, "loss": float(loss.detach()),
                   **{t.name: float(t.value.detach()) for t in terms}}
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "step"})
            if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                self._validate(row)
            self.wall_seconds = wall_before + time.time() - t_start
            self.stopping = self._stop_reason(end, t_start, max_minutes)
            for cb in self.callbacks:
                if cb.on_train_batch_end(self, row, parts) is False:
                    self.stopping = "cancelled"
            if self.stopping or self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self.stopping:
                stopped = self.stopping
                break
        bar.close()
        self.stopping = None
        return stopped

    def _stream(self, batches: list[list[int]]):
        """The batches of the epoch from the loop's position on (see :func:`batch_stream`)."""
        return batch_stream(self.make_batch, batches[self.position:], workers=self.workers,
                            pin_memory=self.device.type == "cuda")

    def _validate(self, row: dict) -> None:
        """Validation loss into ``row``; best weights and the count of validations without improvement, in the
        callbacks' :meth:`Callback.validation_weights`."""
        with contextlib.ExitStack() as weights:
            for cb in self.callbacks:
                weights.enter_context(cb.validation_weights(self))
            row["val_loss"] = self.validate() if self.rank == 0 else float("nan")
            if row["val_loss"] < self.best_val - self.config.min_improvement:
                self.best_val, self.bad_validations, self.best_step = row["val_loss"], 0, self.step
                if self.config.keep_best:
                    self.best = {k: p.detach().clone() for k, p in self.params.items()}
            else:
                self.bad_validations += 1

    def _stop_reason(self, end: int, t_start: float, max_minutes: float | None) -> str | None:
        cfg = self.config
        reason = None
        if cfg.patience is not None and agree(self.bad_validations >= cfg.patience, every=False):
            reason = "early stopping"
        elif self.step >= cfg.steps:
            reason = "steps"
        elif self.step >= end:
            reason = "interrupted"
        # every process asks every step, so that all of them end at the same one
        if max_minutes is not None and agree(time.time() - t_start >= 60.0 * max_minutes, every=False):
            reason = reason or "time budget"
        return reason
