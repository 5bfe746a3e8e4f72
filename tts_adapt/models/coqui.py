"""What every coqui-tts backend shares: config fields, tokenizer, speaker conditioning, synthesis checks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tts_adapt.data.audio import AudioConfig
from tts_adapt.data.validation import speakable, unspeakable_reason
from tts_adapt.models.base import CONFIG_FILE, Batch, TTSBackend
from tts_adapt.models.features import FeatureStats
from tts_adapt.models.speakers import SpeakerTable


def coqui_audio(audio: AudioConfig):
    """coqui's ``BaseAudioConfig`` with the toolkit's signal settings (saved in config.json)."""
    from TTS.config.shared_configs import BaseAudioConfig

    return BaseAudioConfig(sample_rate=audio.sample_rate, fft_size=audio.n_fft, win_length=audio.win_length,
                           hop_length=audio.hop_length, num_mels=audio.n_mels, mel_fmin=audio.mel_fmin,
                           mel_fmax=audio.mel_fmax)


def speaker_fields(speakers: SpeakerTable) -> dict:
    """coqui config fields for d-vector or speaker-ID-table conditioning."""
    d_vector = speakers.kind == "d_vector"
    return {"use_d_vector_file": d_vector, "d_vector_dim": speakers.dim if d_vector else None,
            "use_speaker_embedding": not d_vector, "speakers": None if d_vector else list(speakers.names)}


def loss_parts(losses: dict) -> dict[str, float]:
    """coqui's loss dict as plain floats (for logs)."""
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}


TEXT_FIELDS = {"use_phonemes": True, "phonemizer": "espeak", "phoneme_language": "en-us",
               "text_cleaner": "english_cleaners"}


class CoquiBackend(TTSBackend):
    """A backend over one coqui-tts model class (``model_class``), built from its config alone."""

    def __init__(self, model, audio, stats, speakers, info=None):
        super().__init__(model, audio, stats, speakers, info)
        self.config = model.config
        self.tokenizer = model.tokenizer
        self._criterion = model.get_criterion()

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        """The coqui-tts model class (imported lazily: coqui's import is slow)."""
        raise NotImplementedError

    @classmethod
    def make_config(cls, audio: AudioConfig, speakers: SpeakerTable, size: str):
        """The coqui config of a new model of the given size preset."""
        raise NotImplementedError

    @classmethod
    def _build(cls, config, speakers: SpeakerTable) -> nn.Module:
        if speakers.kind == "id_table" and list(config.speakers or []) != list(speakers.names):
            raise ValueError("the model config's speakers do not match its speaker table")
        return cls.model_class()(config)  # coqui builds tokenizer (espeak-ng phonemes) and speaker manager

    @classmethod
    def create(cls, audio: AudioConfig, stats: FeatureStats, speakers: SpeakerTable, size: str = "small", **_):
        return cls(cls._build(cls.make_config(audio, speakers, size), speakers), audio, stats, speakers,
                   {"size": size})

    @classmethod
    def _load_model(cls, folder: Path, speakers: SpeakerTable) -> nn.Module:
        from TTS.config import load_config

        return cls._build(load_config(str(folder / CONFIG_FILE)), speakers)

    def _coqui_config(self):
        return self.config

    def text_to_ids(self, text: str) -> list[int]:
        return self.tokenizer.text_to_ids(text)

    @property
    def text_config(self) -> dict:
        return {"phonemizer": self.config.phonemizer, "language": self.config.phoneme_language,
                "cleaner": self.config.text_cleaner, "vocab": self.tokenizer.characters.vocab}

    @property
    def pad_id(self) -> int:
        return self.tokenizer.characters.pad_id or 0

    def coqui_batch(self, batch: Batch) -> dict:
        aux = self.speakers.conditioning(batch.speakers, batch.device)
        return {"text_input": batch.tokens, "text_lengths": batch.token_lengths, "mel_input": batch.mel,
                "mel_lengths": batch.mel_lengths, "pitch": batch.f0, "energy": None, "durations": None,
                "d_vectors": aux["d_vectors"], "speaker_ids": aux["speaker_ids"]}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        _, losses = self.model.train_step(self.coqui_batch(batch), self._criterion)
        return losses["loss"], loss_parts(losses)

    def _inference(self, ids: torch.Tensor, aux: dict, length_scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised mel ``(frames, n_mels)`` from coqui's inference, and the F0 contour ``(frames,)`` in Hz
        (0 where unvoiced) for a model that predicts pitch, else None."""
        raise NotImplementedError

    def speaker_aux(self, speaker: str | None = None, d_vector: torch.Tensor | None = None) -> dict:
        """coqui ``aux_input`` conditioning one utterance on a known speaker or a d-vector ``(dim,)``."""
        if (speaker is None) == (d_vector is None):
            raise ValueError("give exactly one of speaker (a known speaker name) or d_vector (zero-shot)")
        if d_vector is not None:
            if self.speakers.kind != "d_vector":
                raise ValueError("this model uses a speaker-ID table; zero-shot voices need a d-vector model")
            if d_vector.numel() != self.speakers.dim:
                raise ValueError(f"the d-vector has {d_vector.numel()} values; this model's speaker embeddings "
                                 f"have {self.speakers.dim}")
            return {"d_vectors": d_vector.reshape(1, -1).float().to(self.device), "speaker_ids": None}
        return self.speakers.conditioning([speaker], self.device)

    def text_ids_tensor(self, text: str) -> torch.Tensor:
        """Token ids ``(1, T)`` of one sentence; empty text, text with nothing speakable (which espeak-ng
        would read out as "Chinese letter" or "grinning face") or without known tokens is an error."""
        if not text or not text.strip():
            raise ValueError("text is empty: nothing to synthesise")
        if not speakable(text):
            raise ValueError(f"text {unspeakable_reason(text)}")
        ids = self.text_to_ids(text)
        if not ids:
            raise ValueError(f"text {text!r} gives no tokens the model knows")
        return torch.tensor([ids], device=self.device)

    def to_log_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """The model's output mel ``(frames, n_mels)`` as a natural-log mel (undoes the normalisation)."""
        return self.stats.denormalize_mel(mel)

    def synthesize_mel(self, text: str, speaker: str | None = None, d_vector: torch.Tensor | None = None,
                       length_scale: float = 1.0) -> torch.Tensor:
        return self.synthesize_mel_f0(text, speaker, d_vector, length_scale)[0]

    @torch.no_grad()
    def synthesize_mel_f0(self, text: str, speaker: str | None = None, d_vector: torch.Tensor | None = None,
                          length_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not text or not text.strip():
            raise ValueError("text is empty: nothing to synthesise")
        aux = self.speaker_aux(speaker, d_vector)
        ids = self.text_ids_tensor(text)
        was_training = self.model.training
        self.model.eval()
        try:
            mel, f0 = self._inference(ids, aux, length_scale)
        finally:
            self.model.train(was_training)
        return self.to_log_mel(mel.float().cpu()).T.contiguous(), f0.float().cpu() if f0 is not None else None

    def lora_targets(self) -> list[str]:
        """Linear, Conv1d and MultiheadAttention modules outside ``excluded_prefixes`` (never
        the inner projections of an attention module that is itself a target). Dilated and
        grouped Conv1d layers are left out: peft builds their LoRA-A without the dilation and
        groups, so the update would not have the layer's shape."""
        targets = []
        attention = [n for n, m in self.model.named_modules() if isinstance(m, nn.MultiheadAttention)]
        excluded = self.excluded_prefixes + ("speaker_encoder",)  # coqui's speaker encoder, if loaded
        for name, module in self.model.named_modules():
            if any(name == p or name.startswith(p + ".") for p in excluded):
                continue
            if any(name.startswith(a + ".") for a in attention):
                continue
            if isinstance(module, nn.Conv1d) and (module.dilation != (1,) or module.groups != 1):
                continue
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.MultiheadAttention)):
                targets.append(name)
        return targets

    excluded_prefixes: tuple[str, ...] = ()
