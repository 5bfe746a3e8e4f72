"""Voices the demo can speak, and the models that speak them: the base model and every adapter of the
bank, each loaded once and kept (a sentence then takes a fraction of a second per model).

A voice is one of

* an adapter's target (``target:<adapter>``): adapters trained on the same voice (equal target
  d-vectors) share one entry; those adapters speak it as their speaker ``target``, the base model
  and the other adapters zero-shot from its d-vector;
* an old pretraining speaker of the base model (``old:<name>``), spoken by name by every model
  (where an adapter's forgetting becomes audible);
* a reference clip (``reference``), spoken zero-shot by every model from its d-vector.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tts_adapt.adapt.adapter import TARGET_NAME, adapted_model
from tts_adapt.demo.bank import AdapterBank
from tts_adapt.models.synthesis import Synthesizer, default_model_dir, reference_d_vector

BASE = "base"
REFERENCE = "reference"
MAX_TEXT_CHARS = 600
SAME_VOICE_COSINE = 0.999


@dataclass(frozen=True)
class Voice:
    key: str  # "target:<adapter>", "old:<speaker>" or "reference"
    label: str
    speaker: str | None = None  # an old speaker's name
    d_vector: torch.Tensor | None = None  # a target's d-vector (256,)
    adapters: tuple[str, ...] = ()  # adapters trained on this voice


class VoiceModels:
    """The base model and the bank's adapters as :class:`Synthesizer` objects, loaded on first use."""

    def __init__(self, bank: AdapterBank, model: str | Path | None = None, vocoder: str | Path | None = None,
                 device: str | None = None):
        self.bank = bank
        self.device = device  # a --device value: where every voice's model runs (None: the CPU)
        self.model_dir = Path(model) if model else default_model_dir()
        self.vocoder = vocoder
        self._synths: dict[str, tuple[float, Synthesizer]] = {}
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one synthesis at a time: the CPU is the bottleneck anyway
        self.base = self.synthesizer(BASE)

    # ------------------------------------------------------------------ models
    def synthesizer(self, name: str) -> Synthesizer:
        """The base model (``"base"``) or an adapter of the bank by name, cached; an adapter whose files
        changed on disk since it was loaded is loaded again."""
        path = None if name == BASE else self.bank.get(name).path
        stamp = 0.0 if path is None else (path / "adapter_model.safetensors").stat().st_mtime
        with self._load_lock:
            cached = self._synths.get(name)
            if cached is None or cached[0] != stamp:
                model = self.model_dir if path is None else adapted_model(path, self.model_dir)
                synth = Synthesizer(model, vocoder=self.vocoder, device=self.device)
                self._synths[name] = (stamp, synth)
            return self._synths[name][1]

    def preload(self) -> list[str]:
        """Load every adapter of the bank now (so the first comparison is as fast as the next)."""
        names = self.bank.names()
        for name in names:
            self.synthesizer(name)
        return names

    # ------------------------------------------------------------------ voices
    def old_speakers(self) -> list[str]:
        table = self.base.backend.speakers
        pretrain = [n for n in table.names if table.sets.get(n) == "pretrain"]
        return pretrain or [n for n in table.names if n != TARGET_NAME]

    def voices(self) -> list[Voice]:
        """Target voices of the bank's adapters first, then the old speakers, then a reference clip."""
        groups: list[tuple[torch.Tensor | None, list[str]]] = []
        for adapter in self.bank.adapters():
            d = None if adapter.d_vector is None else adapter.d_vector.float()
            for vec, names in groups:
                if d is not None and vec is not None and \
                        torch.nn.functional.cosine_similarity(vec, d, dim=0) >= SAME_VOICE_COSINE:
                    names.append(adapter.name)
                    break
            else:
                groups.append((d, [adapter.name]))
        voices = [Voice(f"target:{names[0]}", f"target voice of {', '.join(names)}", d_vector=vec,
                        adapters=tuple(names)) for vec, names in groups]
        voices += [Voice(f"old:{s}", f"old speaker {s}", speaker=s) for s in self.old_speakers()]
        voices.append(Voice(REFERENCE, "reference clip (zero-shot, upload or record below)"))
        return voices

    def voice(self, key: str, reference: str | Path | None = None) -> Voice:
        """The voice named by ``key``; for ``reference``, the clip's d-vector (validated audio)."""
        if key == REFERENCE:
            if not reference:
                raise ValueError("upload or record a reference clip to speak in its voice")
            d = reference_d_vector([reference], self.base.sample_rate)
            return Voice(REFERENCE, "reference clip", d_vector=d)
        for v in self.voices():
            if v.key == key:
                return v
        raise ValueError(f"{key!r} is not a voice of this demo (press Refresh to update the lists)")

    # ------------------------------------------------------------------ synthesis
    def speak(self, model: str, text: str, voice: Voice) -> tuple[np.ndarray, torch.Tensor]:
        """``(waveform (samples,) float32, log-mel (n_mels, frames))`` of ``text`` by ``model`` in ``voice``."""
        text = (text or "").strip()
        if not text:
            raise ValueError("type a sentence to speak")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"the text has {len(text)} characters; the demo speaks at most {MAX_TEXT_CHARS}")
        synth = self.synthesizer(model)
        if voice.speaker is not None:
            kwargs = {"speaker": voice.speaker}
        elif model in voice.adapters:
            kwargs = {"speaker": TARGET_NAME}
        else:
            if synth.backend.speakers.kind != "d_vector" or voice.d_vector is None:
                raise ValueError(f"model {model!r} has a speaker-ID table: it cannot speak a new voice zero-shot")
            kwargs = {"d_vector": voice.d_vector}
        with self._run_lock, torch.inference_mode():
            mel, f0 = synth.mel_f0(text, **kwargs)
            wav = synth.vocode(mel, f0)
        return wav, mel


def mel_image(mel: torch.Tensor, height_scale: int = 2, width_scale: int = 2) -> np.ndarray:
    """RGB image ``(n_mels * height_scale, frames * width_scale, 3)`` uint8 of a log-mel, low frequencies
    at the bottom."""
    from matplotlib import colormaps

    m = mel.detach().cpu().numpy()
    top = float(m.max())
    m = np.clip((m - (top - 9.0)) / 9.0, 0.0, 1.0)  # a fixed range (9 nats of log-mel) below the loudest bin
    rgb = (colormaps["magma"](m[::-1])[..., :3] * 255).astype(np.uint8)
    return np.repeat(np.repeat(rgb, height_scale, axis=0), width_scale, axis=1)
