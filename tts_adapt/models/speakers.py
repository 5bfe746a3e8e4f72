"""Speaker conditioning: d-vectors from reference audio, or a speaker-ID table.

A :class:`SpeakerTable` maps speaker names to what the model is conditioned on:

* ``d_vector``: a 256-dimensional resemblyzer embedding per speaker (mean of
  its utterances' embeddings). Any voice with a few seconds of audio gets one,
  so the model speaks unseen voices zero-shot.
* ``id_table``: an index into the model's own embedding table (as in most
  coqui-tts zoo models); only the speakers seen in training exist.

Stored as ``speakers.safetensors`` next to the model (names in the metadata).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from tts_adapt.data.samples import Utterance
from tts_adapt.data.speaker_encoder import SpeakerEncoder
from tts_adapt.io import atomic_path

SPEAKERS_FILE = "speakers.safetensors"
CONDITIONING = ("d_vector", "id_table")


class UnknownSpeakerError(ValueError):
    pass


@dataclass
class SpeakerTable:
    kind: str  # "d_vector" | "id_table"
    names: list[str]
    embeddings: torch.Tensor | None = None  # (num_speakers, dim) for d_vector
    sets: dict[str, str] = field(default_factory=dict)  # speaker -> speaker set (pretrain/unseen/target), if known

    def __post_init__(self):
        if self.kind not in CONDITIONING:
            raise ValueError(f"speaker conditioning must be one of {', '.join(CONDITIONING)}; got {self.kind!r}")
        if self.kind == "d_vector" and (self.embeddings is None or len(self.embeddings) != len(self.names)):
            raise ValueError("a d_vector speaker table needs one embedding per speaker")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1]) if self.embeddings is not None else 0

    def index(self, name: str) -> int:
        """Row of speaker ``name``. A name the table lacks also matches a single table name ending in
        ``_<name>``: coqui's zoo models name VCTK's speakers ``VCTK_p225`` where the reader says ``p225``."""
        try:
            return self.names.index(name)
        except ValueError:
            prefixed = [i for i, n in enumerate(self.names) if n.endswith("_" + name)]
            if len(prefixed) == 1:
                return prefixed[0]
            shown = ", ".join(self.names[:12]) + (" ..." if len(self.names) > 12 else "")
            raise UnknownSpeakerError(f"{name!r} is not a speaker of the model; known speakers: {shown}") from None

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a speaker of the model, matched as :meth:`index` matches it."""
        try:
            self.index(name)
            return True
        except UnknownSpeakerError:
            return False

    def conditioning(self, names: Sequence[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor | None]:
        """coqui ``aux_input`` for a batch of speaker names, on ``device`` (the model's): ``d_vectors``
        (B, dim) or ``speaker_ids`` (B,). The table itself stays where it was loaded (the CPU)."""
        rows = [self.index(n) for n in names]
        if self.kind == "d_vector":
            idx = torch.tensor(rows, dtype=torch.long, device=self.embeddings.device)
            return {"d_vectors": self.embeddings[idx].to(device), "speaker_ids": None}
        return {"d_vectors": None, "speaker_ids": torch.tensor(rows, dtype=torch.long, device=device)}

    def save(self, folder: str | Path) -> None:
        tensors = {"embeddings": self.embeddings.contiguous()} if self.embeddings is not None else {}
        if not tensors:
            tensors = {"ids": torch.arange(len(self.names))}
        with atomic_path(Path(folder) / SPEAKERS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"kind": self.kind, "names": json.dumps(self.names),
                                                   "sets": json.dumps(self.sets)})

    @classmethod
    def load(cls, folder: str | Path) -> "SpeakerTable":
        path = Path(folder) / SPEAKERS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: speaker file missing from the model folder")
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
            emb = fh.get_tensor("embeddings") if "embeddings" in fh.keys() else None
        return cls(meta["kind"], json.loads(meta["names"]), emb, json.loads(meta.get("sets", "{}")))


def speaker_d_vectors(utts: Sequence[Utterance], per_speaker: int = 10, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Mean resemblyzer embedding ``(256,)`` of up to ``per_speaker`` utterances of each speaker."""
    by_speaker: dict[str, list[str]] = defaultdict(list)
    for u in utts:
        if len(by_speaker[u.speaker]) < per_speaker:
            by_speaker[u.speaker].append(u.audio_path)
    encoder = SpeakerEncoder()
    return {s: encoder.embed_speaker(files)
            for s, files in tqdm(sorted(by_speaker.items()), desc="speaker embeddings", unit="spk",
                                 disable=not progress)}
