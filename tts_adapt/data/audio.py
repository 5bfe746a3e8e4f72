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
    """An audio file that cannot be used, with the file, the reason and a short category for summaries."""

    def __init__(self, path: str | Path, reason: str, category: str = "unreadable audio"):
        self.path = str(path)
        self.reason = reason
        self.category = category
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
    declared = wav_header_frames(path)
    if declared is not None and data.shape[0] < declared:  # libsndfile silently reads what is there
        raise AudioError(path, f"truncated: its header says {declared / sr:.2f} s ({declared} frames) but the "
                               f"file holds {data.shape[0] / sr:.2f} s ({data.shape[0]} frames)", "truncated audio")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    if mono and data.shape[1] > 1:
        notes.append(f"down-mixed {data.shape[1]} channels to mono")
        data = data.mean(axis=1, keepdims=True)
    wav = data[:, 0] if mono else data.T
    if sr != sample_rate:
        notes.append(f"resampled {sr} Hz to {sample_rate} Hz")
        wav = resample(wav, sr, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32), notes


def resample(wav: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """``wav`` ``(num_samples,)`` (or ``(channels, num_samples)``) at ``sample_rate`` as float32 at
    ``target_rate`` (torchaudio's windowed-sinc resampler, the one every audio file is read with)."""
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if sample_rate == target_rate:
        return wav
    return torchaudio.functional.resample(torch.from_numpy(wav), sample_rate, target_rate).numpy()


def wav_header_frames(path: str | Path) -> int | None:
    """Frames a RIFF/RF64 WAV file's header declares (its data chunk's size over the frame size).

    ``None`` for other formats and for the sizes streaming writers leave (0 or 0xFFFFFFFF): libsndfile
    corrects the frame count of a cut file to what is there, so only the header tells that data is missing.
    """
    try:
        with open(path, "rb") as f:
            riff = f.read(12)
            if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64") or riff[8:12] != b"WAVE":
                return None
            block_align, data_size, ds64_data_size = None, None, None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                chunk, size = head[:4], int.from_bytes(head[4:], "little")
                if chunk == b"data":
                    data_size = ds64_data_size if riff[:4] == b"RF64" else size
                    break
                body = f.read(size) if chunk in (b"ds64", b"fmt ") else b""
                if chunk == b"ds64" and len(body) >= 16:  # RF64: the real sizes, 64-bit (riff, data, ...)
                    ds64_data_size = int.from_bytes(body[8:16], "little")
                elif chunk == b"fmt " and len(body) >= 14:
                    block_align = int.from_bytes(body[12:14], "little")
                f.seek(size - len(body) + (size & 1), 1)  # chunks are padded to an even length
    except OSError:
        return None
    if not block_align or not data_size or data_size == 0xFFFFFFFF:
        return None
    return data_size // block_align


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
