"""Text to speech with a model folder: sentence splitting, speaker choice, vocoding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tts_adapt.data.audio import LogMel, load_audio
from tts_adapt.data.samples import InputReport, Utterance
from tts_adapt.data.speaker_encoder import SpeakerEncoder
from tts_adapt.data.validation import AudioChecks, check_audio, speakable, unspeakable_reason
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.features import extract_f0
from tts_adapt.models.vocoder import make_vocoder

#: The base model shipped inside the package (pretrained on the embedded corpus).
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "pretrained" / "base"
PAUSE_SECONDS = 0.25
MIN_REFERENCE_SECONDS = 1.0
#: Speaking-rate factors accepted: beyond 4x either way speech is no longer intelligible (0 gives no speech).
LENGTH_SCALE_RANGE = (0.25, 4.0)


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL / "model.pth").is_file():
        raise FileNotFoundError(f"the shipped base model is missing from {DEFAULT_MODEL}; "
                                "pass --model DIR with a model folder")
    return DEFAULT_MODEL


def check_length_scale(value: float, name: str = "length_scale") -> float:
    """``value`` if it is a finite speaking-rate factor within :data:`LENGTH_SCALE_RANGE`, else a
    ValueError naming ``name`` (the flag or argument it came from)."""
    low, high = LENGTH_SCALE_RANGE
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be a number from {low:g} to {high:g} (>1 slower), got {value!r}")
    return float(value)


def sentences_to_speak(text: str) -> list[str]:
    """:func:`split_sentences` of ``text``; empty text or text with nothing speakable is an error naming it."""
    sentences = split_sentences(text or "")
    if not sentences:
        raise ValueError("text is empty: nothing to synthesise")
    if not speakable(text):
        raise ValueError(f"text {unspeakable_reason(text)}")
    return sentences


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (pysbd, the splitter coqui-tts uses); empty pieces dropped."""
    import pysbd

    return [s.strip() for s in pysbd.Segmenter(language="en", clean=True).segment(text) if s.strip()]


def reference_d_vector(wavs: Sequence[str | Path], sample_rate: int, backend: TTSBackend | None = None
                       ) -> torch.Tensor:
    """Speaker embedding from reference recordings: resemblyzer's ``(256,)``, or with ``backend`` the
    embedding of that model's own speaker encoder (e.g. YourTTS's). Silent, unreadable or too short
    references are refused with the file and the reason."""
    if not wavs:
        raise ValueError("no reference audio given")
    report = InputReport("error")
    # a reference only gives a speaker embedding: a clip below the model's rate is upsampled with a warning
    checks = AudioChecks(sample_rate=sample_rate, min_duration=MIN_REFERENCE_SECONDS, allow_upsampling=True)
    for w in wavs:
        check_audio(Utterance(str(w), "", "reference"), report, checks)
    if backend is not None:
        return backend.embed_speaker([str(w) for w in wavs]).float()
    return torch.from_numpy(SpeakerEncoder().embed_speaker([str(w) for w in wavs])).float()


class Synthesizer:
    """A model (a folder, or a coqui zoo name) plus a vocoder: Griffin-Lim by default, ``"world"`` (voicing
    from the model's predicted F0; models that predict pitch) or a coqui HiFi-GAN folder. A model that
    makes waveforms itself (VITS) is not vocoded. To speak with an adapter, pass the backend it was put on
    (:meth:`tts_adapt.adapt.adapter.Adapter.apply`). ``device`` (a ``--device`` value) moves the model there;
    Griffin-Lim and HiFi-GAN vocode on the model's device, WORLD on the CPU; waveforms come back as numpy."""

    def __init__(self, model: str | Path | TTSBackend | None = None, vocoder: str | Path | None = None,
                 griffin_lim_iters: int = 32, device: str | None = None):
        self.backend = model if isinstance(model, TTSBackend) else TTSBackend.from_pretrained(
            model or default_model_dir())
        if device is not None:  # None: where the model already is (models load on the CPU)
            self.backend.to(device)
        self.backend.model.eval()
        audio = self.backend.audio
        if vocoder and self.backend.produces_waveform:
            raise ValueError(f"a {self.backend.name} model makes its waveform itself; it takes no vocoder")
        self.vocoder = make_vocoder(vocoder, audio, griffin_lim_iters)

    @property
    def sample_rate(self) -> int:
        return self.backend.audio.sample_rate

    def mel(self, text: str, speaker: str | None = None, d_vector: torch.Tensor | None = None,
            length_scale: float = 1.0) -> torch.Tensor:
        """Log-mel ``(n_mels, frames)`` of all sentences of ``text`` (joined by short pauses)."""
        return self.mel_f0(text, speaker, d_vector, length_scale)[0]

    def mel_f0(self, text: str, speaker: str | None = None, d_vector: torch.Tensor | None = None,
               length_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`mel` and the model's F0 contour ``(frames,)`` in Hz (None for a model without pitch)."""
        check_length_scale(length_scale)
        sentences = sentences_to_speak(text)
        frames = int(PAUSE_SECONDS * self.sample_rate / self.backend.audio.hop_length)
        pause = torch.full((self.backend.audio.n_mels, frames), float(np.log(self.backend.audio.log_floor)))
        mels, f0s = [], []
        for i, s in enumerate(sentences):
            if i:
                mels.append(pause)
                f0s.append(torch.zeros(frames))
            mel, f0 = self.backend.synthesize_mel_f0(s, speaker=speaker, d_vector=d_vector, length_scale=length_scale)
            mels.append(mel)
            f0s.append(f0)
        f0 = None if any(f is None for f in f0s) else torch.cat(f0s)
        return torch.cat(mels, dim=1), f0

    def vocode(self, mel: torch.Tensor, f0: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Waveform ``(samples,)`` float32 of a log-mel ``(n_mels, frames)`` (and its F0 contour, for a
        vocoder that needs one)."""
        with torch.no_grad():
            if not self.vocoder.needs_f0:
                return self.vocoder(mel.to(self.backend.device)).cpu().numpy().astype(np.float32)
            if f0 is None:
                raise ValueError(f"the {type(self.vocoder).__name__} takes its voicing from the model's predicted "
                                 f"pitch; a {self.backend.name} model predicts none: use the Griffin-Lim vocoder")
            return self.vocoder(mel, f0).cpu().numpy().astype(np.float32)

    def speak(self, text: str, speaker: str | None = None, speaker_wavs: Sequence[str | Path] | None = None,
              length_scale: float = 1.0, d_vector: torch.Tensor | None = None) -> np.ndarray:
        """Waveform ``(samples,)`` float32 at :attr:`sample_rate`, in the voice of ``speaker`` (a name), of
        ``speaker_wavs`` (reference clips, zero-shot) or of a precomputed ``d_vector``."""
        check_length_scale(length_scale)
        sentences = sentences_to_speak(text)  # before the references are embedded
        if speaker_wavs:
            d_vector = reference_d_vector(speaker_wavs, self.sample_rate, self.backend)
        if d_vector is None and speaker is None:  # an adapter's own voice, else the first speaker
            names = self.backend.speakers.names
            speaker = "target" if "target" in names else names[0]
        speaker = None if d_vector is not None else speaker
        if self.backend.produces_waveform:
            pause = torch.zeros(int(PAUSE_SECONDS * self.sample_rate))
            parts = []
            for i, s in enumerate(sentences):
                parts += [pause] if i else []
                parts.append(self.backend.synthesize_wav(s, speaker=speaker, d_vector=d_vector,
                                                         length_scale=length_scale))
            return torch.cat(parts).cpu().numpy().astype(np.float32)
        return self.vocode(*self.mel_f0(text, speaker=speaker, d_vector=d_vector, length_scale=length_scale))

    def copy_synthesis(self, audio_path: str | Path) -> np.ndarray:
        """A recording through the model's features and this vocoder (analysis, then synthesis): what the
        vocoder makes of a perfect prediction, the ceiling of any model that uses it."""
        if self.backend.produces_waveform:
            raise ValueError(f"a {self.backend.name} model makes its waveform itself; it has no mel to vocode")
        extractor = self.backend.feature_extractor()
        f0 = None
        if extractor is None:  # the toolkit's own log-mel (its extractor would compute F0 too)
            if getattr(self, "_log_mel", None) is None:
                self._log_mel = LogMel(self.backend.audio)
            wav = load_audio(audio_path, self.sample_rate)[0]
            mel = self._log_mel(torch.from_numpy(wav))
            if self.vocoder.needs_f0:
                f0 = extract_f0(wav, self.backend.audio, mel.shape[1])
        else:
            mel, f0, _ = extractor(str(audio_path))
            mel = mel.T
        return self.vocode(mel, f0)
