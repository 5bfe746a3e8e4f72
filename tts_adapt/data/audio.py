"""Audio loading and log-mel features from one audio configuration.

The same :class:`AudioConfig` is used by the corpus builder, the dataset readers
and (through :meth:`AudioConfig.to_coqui`) by the acoustic models, so features
computed for training, curvature fitting and evaluation always agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio


class AudioError(ValueError):
    """An audio file that cannot be used, with the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


F0_METHODS = ("rapt", "swipe")
#: Settings added after models were saved without them, with the value those models used.
EARLIER_AUDIO_DEFAULTS = {"f0_method": "swipe"}


@dataclass(frozen=True)
class AudioConfig:
    """Signal and feature settings shared by data, models and evaluation."""

    sample_rate: int = field(default=16000, metadata={"help": "Sampling rate of all audio, Hz."})
    n_fft: int = field(default=1024, metadata={"help": "FFT size of the STFT."})
    win_length: int = field(default=1024, metadata={"help": "Analysis window length, samples."})
    hop_length: int = field(default=256, metadata={"help": "Frame shift, samples."})
    n_mels: int = field(default=80, metadata={"help": "Number of mel channels."})
    mel_fmin: float = field(default=0.0, metadata={"help": "Lowest mel band edge, Hz."})
    mel_fmax: float | None = field(default=8000.0, metadata={"help": "Highest mel band edge, Hz (None: Nyquist)."})
    log_floor: float = field(default=1e-5, metadata={"help": "Magnitude floor before the log."})
    f0_method: str = field(default="rapt", metadata={
        "help": "F0 tracker of the pitch targets: rapt, or swipe (SWIPE', which jumps octaves on voices "
                "below about 70 Hz; the models made before this setting use it)."})

    def __post_init__(self):
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.hop_length <= 0 or self.hop_length > self.win_length:
            raise ValueError(f"hop_length must be in 1..win_length, got {self.hop_length}")
        if self.mel_fmax is not None and self.mel_fmax > self.sample_rate / 2:
            raise ValueError(f"mel_fmax ({self.mel_fmax}) is above Nyquist ({self.sample_rate / 2})")
        if self.f0_method not in F0_METHODS:
            raise ValueError(f"f0_method must be one of {', '.join(F0_METHODS)}, got {self.f0_method!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**EARLIER_AUDIO_DEFAULTS, **{k: v for k, v in d.items() if k in known}})

    def frames(self, num_samples: int) -> int:
        """Number of STFT frames (centred) for ``num_samples`` samples."""
        return num_samples // self.hop_length + 1


def load_audio(path: str | Path, sample_rate: int, *, mono: bool = True) -> tuple[np.ndarray, list[str]]:
    """Read an audio file as float32, down-mixed to mono and resampled to ``sample_rate``.

    Returns ``(wav, notes)``: ``wav`` has shape ``(num_samples,)`` (``(channels,
    num_samples)`` with ``mono=False``, channels kept); ``notes``
    lists the conversions that were made (so callers can report them).
    Raises :class:`AudioError` naming the file when it cannot be read or is empty.
    """
    path = Path(path)
    notes: list[str] = []
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError subclasses
        raise AudioError(path, f"unreadable audio ({exc})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "audio has no samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    if mono and data.shape[1] > 1:
        notes.append(f"down-mixed {data.shape[1]} channels to mono")
        data = data.mean(axis=1, keepdims=True)
    wav = data[:, 0] if mono else data.T
    if sr != sample_rate:
        notes.append(f"resampled {sr} Hz to {sample_rate} Hz")
        wav = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wav)), sr, sample_rate).numpy()
    return np.ascontiguousarray(wav, dtype=np.float32), notes


def save_audio(path: str | Path, wav: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write 16-bit PCM WAV atomically (a partial file never replaces a good one)."""
    from tts_adapt.io import atomic_path

    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wav, sample_rate, subtype="PCM_16", format="WAV")


def rms_dbfs(wav: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


class LogMel(torch.nn.Module):
    """Natural-log mel magnitude spectrogram through torchaudio.

    Input ``(..., num_samples)`` float waveform; output ``(..., n_mels, frames)``.
    """

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            f_min=config.mel_fmin,
            f_max=config.mel_fmax,
            n_mels=config.n_mels,
            power=1.0,
            norm="slaney",
            mel_scale="slaney",
            center=True,
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(self.mel(wav), min=self.config.log_floor))
