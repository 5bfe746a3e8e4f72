"""Objective measures of synthetic speech against real recordings.

* **MCD-DTW** (mel-cepstral distortion, dB): mel-cepstra of order 24
  (pysptk ``mcep`` on Blackman-windowed 1024-sample frames, all-pass constant
  from ``pysptk.util.mcepalpha``), speech frames only (leading/trailing
  silence trimmed with librosa), aligned by dynamic time warping (librosa);
  ``MCD = 10 / ln 10 * sqrt(2 * sum_{d=1..24} (c_d - c'_d)^2)`` averaged over the
  aligned path. The energy coefficient c_0 is left out, as usual.
* **Speaker similarity**: cosine of resemblyzer speaker embeddings.
* **F0 RMSE** (Hz) and **voicing error** (fraction of frames whose voiced/unvoiced
  decision differs) on the DTW-aligned frames, F0 from librosa's pYIN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import librosa
import numpy as np

MCEP_ORDER = 24
FRAME = 1024
HOP = 256


def _frames(wav: np.ndarray) -> np.ndarray:
    import pysptk

    wav = np.asarray(wav, dtype=np.float64)
    if len(wav) < FRAME:
        wav = np.pad(wav, (0, FRAME - len(wav)))
    frames = librosa.util.frame(wav, frame_length=FRAME, hop_length=HOP).T
    return frames * pysptk.blackman(FRAME)


def trim_silence(wav: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    trimmed, _ = librosa.effects.trim(np.asarray(wav, dtype=np.float32), top_db=top_db, frame_length=FRAME,
                                      hop_length=HOP)
    return trimmed if len(trimmed) >= FRAME else np.asarray(wav, dtype=np.float32)


def mel_cepstrum(wav: np.ndarray, sample_rate: int, order: int = MCEP_ORDER) -> np.ndarray:
    """Mel-cepstra ``(frames, order + 1)`` of a waveform (pysptk ``mcep``)."""
    import pysptk

    alpha = pysptk.util.mcepalpha(sample_rate)
    frames = _frames(wav)
    # eps keeps mcep stable on near-silent frames
    return np.stack([pysptk.mcep(f, order=order, alpha=alpha, etype=1, eps=1e-8) for f in frames])


def dtw_path(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DTW alignment ``(steps, 2)`` of feature sequences ``a`` (n, d) and ``b`` (m, d), start to end."""
    _, wp = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    return wp[::-1]


@dataclass(frozen=True)
class MCDResult:
    mcd: float  # dB


@dataclass(frozen=True)
class Analysis:
    """What the measures need of one waveform (silence trimmed): mel-cepstra ``(frames, order)``
    without c_0, and, when asked for, F0 in Hz (NaN where unvoiced) with voiced flags per frame."""

    mcep: np.ndarray
    f0: np.ndarray | None = None
    voiced: np.ndarray | None = None


def analyse(wav: np.ndarray, sample_rate: int, pitch: bool = True) -> Analysis:
    """Mel-cepstra (and F0 with ``pitch``) of the speech part of ``wav``. Analysing real recordings
    once and comparing many syntheses with them saves most of the cost of an evaluation."""
    wav = trim_silence(wav)
    mcep = mel_cepstrum(wav, sample_rate)[:, 1:]
    if not pitch:
        return Analysis(mcep)
    f0, voiced = f0_track(wav, sample_rate)
    return Analysis(mcep, f0, voiced)


def mcd_on_path(a: np.ndarray, b: np.ndarray, path: np.ndarray) -> float:
    diff = a[path[:, 0]] - b[path[:, 1]]
    return float(((10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff ** 2, axis=1))).mean())


def f0_on_path(synth: Analysis, real: Analysis, path: np.ndarray) -> "F0Result":
    i = np.clip(path[:, 0], 0, len(synth.f0) - 1)
    j = np.clip(path[:, 1], 0, len(real.f0) - 1)
    both = synth.voiced[i] & real.voiced[j]
    rmse = float(np.sqrt(np.mean((synth.f0[i][both] - real.f0[j][both]) ** 2))) if both.any() else float("nan")
    return F0Result(rmse, float(np.mean(synth.voiced[i] != real.voiced[j])))


def compare(synth: Analysis, real: Analysis) -> dict[str, float]:
    """MCD-DTW (dB), and F0 RMSE (Hz) and voicing error when both analyses have pitch, on one DTW path."""
    path = dtw_path(synth.mcep, real.mcep)
    out = {"mcd_db": mcd_on_path(synth.mcep, real.mcep, path)}
    if synth.f0 is not None and real.f0 is not None:
        f0 = f0_on_path(synth, real, path)
        out.update(f0_rmse_hz=f0.rmse_hz, voicing_error=f0.voicing_error)
    return out


def mcd_dtw(synth: np.ndarray, real: np.ndarray, sample_rate: int) -> MCDResult:
    """Mel-cepstral distortion (dB) of ``synth`` against ``real``, DTW-aligned, c_0 excluded."""
    a = analyse(synth, sample_rate, pitch=False).mcep
    b = analyse(real, sample_rate, pitch=False).mcep
    path = dtw_path(a, b)
    return MCDResult(mcd_on_path(a, b, path))


def f0_track(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz with NaN where unvoiced, voiced flags) per hop of 256 samples (librosa pYIN)."""
    f0, voiced, _ = librosa.pyin(np.asarray(wav, dtype=np.float32), fmin=50.0, fmax=600.0, sr=sample_rate,
                                 frame_length=FRAME, hop_length=HOP)
    return f0, voiced


@dataclass(frozen=True)
class F0Result:
    rmse_hz: float  # over frames voiced in both
    voicing_error: float  # fraction of aligned frames with differing voicing decisions
