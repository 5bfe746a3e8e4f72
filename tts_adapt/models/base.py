"""The model backend interface and its registry.

A backend wraps one coqui-tts acoustic model class and offers the few things the
rest of the toolkit needs: load/save in coqui's folder format, the training loss
of a batch, a mel spectrogram from text and a speaker, the layers LoRA may
target, and its speaker conditioning. Backends register by name, as peft's
tuners do; an unknown name is an error listing the valid ones.

Model folder::

    config.json            coqui-tts model config (load with TTS.config.load_config)
    model.pth              coqui checkpoint: {"model": state_dict, "step": int}
    tts_adapt.json         backend name, audio config, feature statistics, training summary
    speakers.safetensors   speaker table (d-vectors or ID names)
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from tts_adapt.data.audio import AudioConfig
from tts_adapt.io import atomic_path, write_json_atomic
from tts_adapt.models.features import FeatureStats, UtteranceFeatures
from tts_adapt.models.speakers import SPEAKERS_FILE, SpeakerTable
from tts_adapt.registry import Registry

BACKENDS: Registry[type["TTSBackend"]] = Registry("model backend")
META_FILE = "tts_adapt.json"
CHECKPOINT_FILE = "model.pth"
CONFIG_FILE = "config.json"


class ModelFolderError(ValueError):
    """A model folder that is missing a file or holds files that do not belong together."""


register_backend = BACKENDS.register


def get_backend(name: str) -> type["TTSBackend"]:
    import tts_adapt.models.fastpitch  # noqa: F401  built-in backends register on import
    import tts_adapt.models.glowtts  # noqa: F401

    return BACKENDS.get_class(name)


@dataclass
class Batch:
    """A padded batch. ``tokens`` (B, T) with ``token_lengths`` (B,); ``mel`` (B, F, n_mels) normalised,
    ``mel_lengths`` (B,); ``f0`` (B, 1, F) normalised (0 = unvoiced); ``speakers`` B names."""

    tokens: torch.Tensor
    token_lengths: torch.Tensor
    mel: torch.Tensor
    mel_lengths: torch.Tensor
    f0: torch.Tensor
    speakers: list[str]

    def __len__(self) -> int:
        return len(self.speakers)

    @property
    def frame_mask(self) -> torch.Tensor:
        """(B, F) True on real frames, False on padding."""
        return torch.arange(self.mel.shape[1])[None, :] < self.mel_lengths[:, None]


class TTSBackend(ABC):
    """One acoustic model class behind the toolkit's small protocol."""

    name: ClassVar[str]

    def __init__(self, model: nn.Module, audio: AudioConfig, stats: FeatureStats, speakers: SpeakerTable,
                 info: dict | None = None):
        self.model = model
        self.audio = audio
        self.stats = stats
        self.speakers = speakers
        self.info = info or {}

    # ------------------------------------------------------------------ construction and files
    @classmethod
    @abstractmethod
    def create(cls, audio: AudioConfig, stats: FeatureStats, speakers: SpeakerTable, **model_kwargs) -> "TTSBackend":
        """A new, randomly initialised model."""

    @classmethod
    @abstractmethod
    def _load_model(cls, folder: Path, speakers: SpeakerTable) -> nn.Module:
        """Build the coqui model from ``folder/config.json`` (weights are loaded by the caller)."""

    @abstractmethod
    def _coqui_config(self):
        """The coqui config object of the model (saved as config.json)."""

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "TTSBackend":
        """Load a model folder written by :meth:`save_pretrained` (any registered backend)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"model folder not found: {folder}")
        for name in (CONFIG_FILE, CHECKPOINT_FILE, META_FILE, SPEAKERS_FILE):
            if not (folder / name).is_file():
                raise ModelFolderError(f"{folder}: missing {name} (a model folder holds {CONFIG_FILE}, "
                                       f"{CHECKPOINT_FILE}, {META_FILE} and {SPEAKERS_FILE})")
        meta = json.loads((folder / META_FILE).read_text())
        backend_cls = get_backend(meta["backend"])
        if cls is not TTSBackend and not issubclass(backend_cls, cls):
            raise ModelFolderError(f"{folder} holds a {meta['backend']} model, not {cls.name}")
        speakers = SpeakerTable.load(folder)
        model = backend_cls._load_model(folder, speakers)
        state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ModelFolderError(f"{folder / CHECKPOINT_FILE} does not match {folder / CONFIG_FILE}: "
                                   f"{str(err).splitlines()[0]}") from None
        model.eval()
        return backend_cls(model, AudioConfig.from_dict(meta["audio"]), FeatureStats.from_dict(meta["stats"]),
                           speakers, meta.get("info", {}))

    def save_pretrained(self, folder: str | Path, *, step: int | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / CONFIG_FILE) as tmp:
            self._coqui_config().save_json(str(tmp))
        with atomic_path(folder / CHECKPOINT_FILE) as tmp:
            torch.save({"model": self.model.state_dict(), "step": step}, tmp)
        self.speakers.save(folder)
        write_json_atomic(folder / META_FILE, {"backend": self.name, "audio": self.audio.to_dict(),
                                               "stats": self.stats.to_dict(), "info": self.info})

    # ------------------------------------------------------------------ the protocol
    @abstractmethod
    def text_to_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` through the model's own tokenizer (phonemiser included)."""

    @abstractmethod
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of a batch (scalar, differentiable) and its named parts."""

    @abstractmethod
    def synthesize_mel(self, text: str, speaker: str | None = None, d_vector: torch.Tensor | None = None,
                       length_scale: float = 1.0) -> torch.Tensor:
        """Natural-log mel spectrogram ``(n_mels, frames)`` of ``text`` in a voice (a known speaker,
        or a d-vector ``(dim,)`` for zero-shot)."""

    @abstractmethod
    def lora_targets(self) -> list[str]:
        """Names of the modules (Linear, Conv1d, MultiheadAttention) LoRA may adapt."""

    @property
    def text_config(self) -> dict:
        """What identifies the text front end (for feature caches)."""
        return {"backend": self.name}

    def set_training_progress(self, step: int) -> None:
        """Called before every training step (schedules inside the model); nothing by default."""

    # ------------------------------------------------------------------ shared helpers
    def collate(self, items: Sequence[UtteranceFeatures]) -> Batch:
        """Pad features into a :class:`Batch` (mel and F0 normalised with the model's statistics)."""
        B = len(items)
        T = max(len(f.tokens) for f in items)
        F = max(f.mel.shape[0] for f in items)
        tokens = torch.full((B, T), self.pad_id, dtype=torch.long)
        mel = torch.zeros(B, F, self.audio.n_mels)
        f0 = torch.zeros(B, 1, F)
        for i, f in enumerate(items):
            tokens[i, : len(f.tokens)] = f.tokens
            mel[i, : f.mel.shape[0]] = self.stats.normalize_mel(f.mel)
            f0[i, 0, : f.f0.shape[0]] = self.stats.normalize_f0(f.f0)
        return Batch(tokens, torch.tensor([len(f.tokens) for f in items]), mel,
                     torch.tensor([f.mel.shape[0] for f in items]), f0, [f.speaker for f in items])

    @property
    def pad_id(self) -> int:
        return 0

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def fingerprint(self, module_names: Sequence[str] | None = None) -> str:
        """Hash of names, shapes and values of the given modules' weights (default: all)."""
        h = hashlib.sha256()
        modules = dict(self.model.named_modules())
        for name in sorted(module_names) if module_names is not None else [""]:
            for pname, p in sorted(modules[name].named_parameters(prefix=name)):
                h.update(f"{pname}:{tuple(p.shape)}".encode())
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
