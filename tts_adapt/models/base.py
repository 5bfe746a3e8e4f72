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

:meth:`TTSBackend.from_pretrained` also takes a coqui-tts zoo model, by name or as a
downloaded folder (see :mod:`tts_adapt.models.zoo`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from tts_adapt.data.audio import AudioConfig
from tts_adapt.data.speaker_encoder import SpeakerEncoder
from tts_adapt.device import module_device, pin, resolve_device, to_device
from tts_adapt.io import atomic_path, write_json_atomic
from tts_adapt.models.features import FeatureExtractor, FeatureStats, UtteranceFeatures, extract_features
from tts_adapt.models.speakers import SpeakerTable
from tts_adapt.registry import Registry

BACKENDS: Registry[type["TTSBackend"]] = Registry("model backend")
META_FILE = "tts_adapt.json"
CHECKPOINT_FILE = "model.pth"
CONFIG_FILE = "config.json"


class ModelFolderError(ValueError):
    """A model folder that is missing a file or holds files that do not belong together."""


register_backend = BACKENDS.register


@dataclass
class Batch:
    """A padded batch. ``tokens`` (B, T) with ``token_lengths`` (B,); ``mel`` (B, F, n_mels) normalised,
    ``mel_lengths`` (B,); ``f0`` (B, 1, F) normalised (0 = unvoiced); ``speakers`` B names; ``extras``
    the features' model-specific tensors, zero-padded on their first (time) axis: (B, T_max, ...)."""

    tokens: torch.Tensor
    token_lengths: torch.Tensor
    mel: torch.Tensor
    mel_lengths: torch.Tensor
    f0: torch.Tensor
    speakers: list[str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.speakers)

    @property
    def frame_mask(self) -> torch.Tensor:
        """(B, F) True on real frames, False on padding."""
        return torch.arange(self.mel.shape[1], device=self.mel.device)[None, :] < self.mel_lengths[:, None]

    @property
    def token_mask(self) -> torch.Tensor:
        """(B, T) True on real tokens, False on padding."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None, :] < self.token_lengths[:, None]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch with its tensors on ``device`` (``non_blocking`` from pinned memory)."""
        return to_device(self, torch.device(device), non_blocking)

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (what ``DataLoader(pin_memory=True)`` calls)."""
        return pin(self)


class TTSBackend(ABC):
    """One acoustic model class behind the toolkit's small protocol."""

    name: ClassVar[str]
    #: the attribute of the coqui model holding its speaker-ID embedding table (ID-table models)
    speaker_embedding_module: ClassVar[str] = "emb_g"
    #: True for a model that makes the waveform itself (VITS: ``synthesize_wav``), which no vocoder follows
    produces_waveform: ClassVar[bool] = False

    def __init__(self, model: nn.Module, audio: AudioConfig, stats: FeatureStats, speakers: SpeakerTable,
                 info: dict | None = None):
        self.model = model
        self.audio = audio
        self.stats = stats
        self.speakers = speakers
        self.info = info or {}

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the device every batch and synthesis of it runs on)."""
        return module_device(self.model)

    def to(self, device: str | torch.device | None = "auto") -> "TTSBackend":
        """Move the model to ``device`` (a ``--device`` value, see :func:`tts_adapt.device.resolve_device`);
        the speaker table stays on the CPU and its rows follow each batch. Returns the backend."""
        self.model.to(resolve_device(device))
        return self

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
        """Load a model into its backend (``cls`` or a subclass); see
        :func:`tts_adapt.models.backends.load_backend`."""
        # imported on use: the backends module imports every backend, and each of them imports this module
        from tts_adapt.models.backends import load_backend

        return load_backend(folder, cls)

    def save_pretrained(self, folder: str | Path, *, step: int | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / CONFIG_FILE) as tmp:
            self._coqui_config().save_json(str(tmp))
        with atomic_path(folder / CHECKPOINT_FILE) as tmp:
            torch.save({"model": {k: v.cpu() for k, v in self.model.state_dict().items()}, "step": step}, tmp)
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

    def synthesize_mel_f0(self, text: str, speaker: str | None = None, d_vector: torch.Tensor | None = None,
                          length_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`synthesize_mel` and, for a model that predicts pitch, its F0 contour ``(frames,)`` in Hz
        (0 where unvoiced), else None."""
        return self.synthesize_mel(text, speaker, d_vector, length_scale), None

    @abstractmethod
    def lora_targets(self) -> list[str]:
        """Names of the modules (Linear, Conv1d, MultiheadAttention) LoRA may adapt."""

    @property
    def text_config(self) -> dict:
        """What identifies the text front end (for feature caches)."""
        return {"backend": self.name}

    def set_training_progress(self, step: int) -> None:
        """Called before every training step (schedules inside the model); nothing by default."""

    def mc_fisher_loss(self) -> Callable[[Batch, torch.Generator], torch.Tensor]:
        """``loss(batch, generator)`` for the Monte Carlo Fisher: the training loss with targets sampled from
        the model's own predictive distribution (a scalar, mean over the batch). Only a model whose outputs
        are regressions has one; the others refuse."""
        raise ValueError(f"the Monte Carlo Fisher needs a model whose outputs are regressions (FastPitch-style); "
                         f"the {self.name!r} model is not one; use fisher='empirical'")

    # ------------------------------------------------------------------ features and speakers
    def feature_extractor(self) -> FeatureExtractor | None:
        """What computes the model's features from audio (None: the toolkit's log-mel and F0)."""
        return None

    def extract_features(self, utts, cache_dir: str | Path, **kwargs):
        """:func:`tts_adapt.models.features.extract_features` with this model's text front end and
        feature extractor (keyword arguments passed on)."""
        return extract_features(utts, cache_dir, self.audio, self.text_to_ids, self.text_config,
                                extractor=self.feature_extractor(), **kwargs)

    def embed_speaker(self, audio_paths: Sequence[str | Path]) -> torch.Tensor:
        """The d-vector ``(dim,)`` of a voice from its recordings, with the encoder the model's speaker
        table was made with (resemblyzer for the toolkit's own models)."""
        if self.speakers.kind != "d_vector":
            raise ValueError("this model uses a speaker-ID table; it has no speaker encoder for new voices")
        if getattr(self, "_speaker_encoder", None) is None:
            self._speaker_encoder = SpeakerEncoder()
        return torch.from_numpy(self._speaker_encoder.embed_speaker([str(p) for p in audio_paths])).float()

    def add_speaker(self, name: str, d_vector: torch.Tensor | None = None, *, sets: str = "target"
                    ) -> dict[str, list[int]]:
        """Make ``name`` a speaker of the model (in place; an existing one of that name is replaced).

        A d-vector model takes the given ``d_vector``. An ID-table model gets one new row in its
        embedding table, initialised to the mean of the existing rows (the centre of the known voices,
        a neutral start that adaptation moves towards the new voice); the returned
        ``{module name: [row]}`` says which row a trainer should train (peft's trainable tokens).
        """
        table = self.speakers
        if table.kind == "d_vector":
            if d_vector is None:
                raise ValueError("a d-vector model needs the new speaker's d-vector")
            names = [n for n in table.names if n != name] + [name]
            emb = torch.cat([table.embeddings[[table.names.index(n) for n in names[:-1]]],
                             d_vector.reshape(1, -1).to(table.embeddings.dtype)])
            self.speakers = SpeakerTable("d_vector", names, emb, {**table.sets, name: sets})
            return {}
        embedding = getattr(self.model, self.speaker_embedding_module, None)
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"the model has no speaker embedding table ({self.speaker_embedding_module})")
        if name in table.names:
            row = table.index(name)
        else:
            weight = embedding.weight.detach()
            grown = nn.Embedding(weight.shape[0] + 1, weight.shape[1], device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                grown.weight.copy_(torch.cat([weight, weight.mean(0, keepdim=True)]))
            grown.weight.requires_grad_(embedding.weight.requires_grad)
            setattr(self.model, self.speaker_embedding_module, grown)
            row = weight.shape[0]
            self.speakers = SpeakerTable("id_table", table.names + [name], None, {**table.sets, name: sets})
        return {self.speaker_embedding_module: [row]}

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
        extras = {}
        for name in items[0].extras:
            parts = [f.extras[name] for f in items]
            padded = parts[0].new_zeros((B, max(p.shape[0] for p in parts), *parts[0].shape[1:]))
            for i, p in enumerate(parts):
                padded[i, : p.shape[0]] = p
            extras[name] = padded.float() if padded.is_floating_point() else padded
        return Batch(tokens, torch.tensor([len(f.tokens) for f in items]), mel,
                     torch.tensor([f.mel.shape[0] for f in items]), f0, [f.speaker for f in items], extras)

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
