"""Pretraining utterances replayed while adapting: the pool read from the base model's corpus, a seeded
reservoir buffer streaming over it, and the batch that mixes replayed utterances into a target batch.

The pool is what ``fit-curvature`` reads (:func:`tts_adapt.curvature.run.fit_curvature_file`): the embedded
corpus's pretraining speakers and training split (every utterance of another layout), a seeded sample of
``num_utterances`` sorted by path, features cached on disk and read one utterance at a time. For equal seed
and number the pool is the curvature fit's sample, so both share one feature cache.

The buffer (:class:`Reservoir`) holds ``capacity`` utterances of the pool, chosen by reservoir sampling
(Vitter's Algorithm R) over the pool in a seeded order: it starts with the first ``capacity`` utterances of
that stream, and every :meth:`Reservoir.offer` shows it the next ones, each kept with probability
capacity / (utterances seen so far) in place of a random slot, so that at any moment it is a uniform sample
of the stream seen. Every random draw comes from a generator seeded by (seed, step), and the buffer's state
is its slots and the count seen, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tts_adapt.models.base import Batch
from tts_adapt.models.features import UtteranceFeatures

log = logging.getLogger(__name__)
# what each random generator of the buffer is for: part of its seed, so the draws never share a stream
_STREAM_ORDER, _OFFER, _DRAW = 0, 1, 2


@dataclass
class ReplayPool:
    """Pretraining utterances to replay: their ``features`` (read from disk on use), the ``backend`` name and
    ``collate`` / ``pad_id`` of the model they feed, the ``data`` folder and a ``fingerprint`` of which
    utterances they are (a resumed run must replay the same ones)."""

    features: Sequence[UtteranceFeatures]
    collate: Callable[[Sequence[UtteranceFeatures]], Batch]
    pad_id: int
    backend: str
    data: Path
    fingerprint: str

    def __len__(self) -> int:
        return len(self.features)


def read_replay_pool(data: str | Path, backend, *, num_utterances: int, seed: int, cache_dir: str | Path,
                     layout: str = "auto", progress: bool = True) -> ReplayPool:
    """The pool of pretraining utterances of ``data`` for ``backend`` (module doc). Speakers the model does not
    know are conditioned as the curvature fit does them (:func:`~tts_adapt.curvature.run.condition_unknown_speakers`:
    d-vectors from the model's speaker encoder; an ID-table model leaves them out)."""
    from tts_adapt.curvature.run import condition_unknown_speakers
    from tts_adapt.data.readers import read_dataset

    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: replay data not found; give --replay-data the base model's pretraining "
                                "corpus (e.g. work/corpus, built by tts-adapt quickstart)")
    kwargs = {"speaker_sets": ["pretrain"], "splits": ["train"]} if (data / "manifest.csv").is_file() \
        and layout in ("auto", "tts_adapt") else {}
    utts, report = read_dataset(data, layout, progress=progress, **kwargs)
    if backend.speakers.kind == "id_table":  # leave out the speakers it has no ID for before taking N
        utts = condition_unknown_speakers(backend, utts, progress=progress)
    if not utts:
        raise ValueError(f"{data}: no usable pretraining utterances to replay (--replay-data)\n{report.summary()}")
    if num_utterances < len(utts):
        utts = sorted(random.Random(seed).sample(utts, num_utterances), key=lambda u: u.audio_path)
    utts = condition_unknown_speakers(backend, utts, progress=progress)
    features = backend.extract_features(utts, cache_dir, report=report, progress=progress, lazy=True)
    if not len(features):
        raise ValueError(f"{data}: features of no pretraining utterance could be made for replay\n{report.summary()}")
    h = hashlib.sha256()
    for utt_id, speaker in zip(features.utt_ids, features.speakers):
        h.update(f"{utt_id}|{speaker}\n".encode())
    return ReplayPool(features, backend.collate, backend.pad_id, backend.name, data, h.hexdigest())


class Reservoir:
    """A buffer of ``capacity`` indices into a pool of ``pool_size`` utterances, filled by reservoir sampling
    over the pool in an order fixed by ``seed`` (module doc)."""

    def __init__(self, pool_size: int, capacity: int, seed: int):
        if pool_size < 1 or capacity < 1:
            raise ValueError(f"a replay buffer needs a pool and a capacity of at least 1 (got {pool_size}, {capacity})")
        self.capacity, self.seed = capacity, seed
        self.stream = np.random.default_rng([seed, _STREAM_ORDER]).permutation(pool_size).tolist()
        self.slots: list[int] = self.stream[:capacity]
        self.seen = len(self.slots)

    def offer(self, count: int, step: int) -> None:
        """Show the buffer the next ``count`` utterances of the stream (none once it has seen them all)."""
        rng = np.random.default_rng([self.seed, _OFFER, step])
        for _ in range(count):
            if self.seen >= len(self.stream):
                return
            item = self.stream[self.seen]
            self.seen += 1
            j = int(rng.integers(self.seen))  # uniform over the utterances seen: kept with p = capacity / seen
            if j < self.capacity:
                self.slots[j] = item

    def draw(self, count: int, step: int) -> list[int]:
        """``count`` different utterances of the buffer (all of them if it holds fewer), for step ``step``."""
        rng = np.random.default_rng([self.seed, _DRAW, step])
        picks = rng.choice(len(self.slots), size=min(count, len(self.slots)), replace=False)
        return [self.slots[int(i)] for i in picks]

    def state_dict(self) -> dict:
        return {"slots": torch.tensor(self.slots, dtype=torch.long), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        slots = [int(i) for i in state["slots"]]
        if len(slots) > self.capacity or any(not 0 <= i < len(self.stream) for i in slots):
            raise ValueError("the checkpoint's replay buffer does not fit this run's pool and buffer size")
        self.slots, self.seen = slots, int(state["seen"])


def _pad(t: torch.Tensor, axis: int, size: int, value: float = 0) -> torch.Tensor:
    extra = size - t.shape[axis]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = extra
    return torch.cat([t, t.new_full(shape, value)], axis)


def concat_batches(a: Batch, b: Batch, pad_id: int) -> Batch:
    """The rows of ``a`` then those of ``b`` in one batch, padded as :meth:`TTSBackend.collate` pads (tokens
    with ``pad_id``, everything else with zeros): the batch that collating all their utterances would give."""
    T = max(a.tokens.shape[1], b.tokens.shape[1])
    F = max(a.mel.shape[1], b.mel.shape[1])
    extras = {}
    for name in a.extras:
        size = max(a.extras[name].shape[1], b.extras[name].shape[1])
        extras[name] = torch.cat([_pad(a.extras[name], 1, size), _pad(b.extras[name], 1, size)])
    return Batch(torch.cat([_pad(a.tokens, 1, T, pad_id), _pad(b.tokens, 1, T, pad_id)]),
                 torch.cat([a.token_lengths, b.token_lengths]),
                 torch.cat([_pad(a.mel, 1, F), _pad(b.mel, 1, F)]), torch.cat([a.mel_lengths, b.mel_lengths]),
                 torch.cat([_pad(a.f0, 2, F), _pad(b.f0, 2, F)]), list(a.speakers) + list(b.speakers), extras)


def batch_rows(batch: Batch, rows: list[int]) -> Batch:
    """The ``rows`` of ``batch`` as a batch of the same padded widths."""
    idx = torch.tensor(rows, device=batch.tokens.device)
    return Batch(batch.tokens[idx], batch.token_lengths[idx], batch.mel[idx], batch.mel_lengths[idx],
                 batch.f0[idx], [batch.speakers[i] for i in rows], {k: v[idx] for k, v in batch.extras.items()})
