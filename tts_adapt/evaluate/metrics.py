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
    frames: int  # length of the aligned path


def mcd_dtw(synth: np.ndarray, real: np.ndarray, sample_rate: int) -> MCDResult:
    """Mel-cepstral distortion (dB) of ``synth`` against ``real``, DTW-aligned, c_0 excluded."""
    a = mel_cepstrum(trim_silence(synth), sample_rate)[:, 1:]
    b = mel_cepstrum(trim_silence(real), sample_rate)[:, 1:]
    path = dtw_path(a, b)
    diff = a[path[:, 0]] - b[path[:, 1]]
    per_frame = (10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff ** 2, axis=1))
    return MCDResult(float(per_frame.mean()), len(path))


def f0_track(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz with NaN where unvoiced, voiced flags) per hop of 256 samples (librosa pYIN)."""
    f0, voiced, _ = librosa.pyin(np.asarray(wav, dtype=np.float32), fmin=50.0, fmax=600.0, sr=sample_rate,
                                 frame_length=FRAME, hop_length=HOP)
    return f0, voiced


@dataclass(frozen=True)
class F0Result:
    rmse_hz: float  # over frames voiced in both
    voicing_error: float  # fraction of aligned frames with differing voicing decisions


def f0_error(synth: np.ndarray, real: np.ndarray, sample_rate: int) -> F0Result:
    """F0 RMSE and voicing error of ``synth`` against ``real`` on the mel-cepstral DTW path."""
    s, r = trim_silence(synth), trim_silence(real)
    path = dtw_path(mel_cepstrum(s, sample_rate)[:, 1:], mel_cepstrum(r, sample_rate)[:, 1:])
    f_s, v_s = f0_track(s, sample_rate)
    f_r, v_r = f0_track(r, sample_rate)
    i = np.clip(path[:, 0], 0, len(f_s) - 1)
    j = np.clip(path[:, 1], 0, len(f_r) - 1)
    both = v_s[i] & v_r[j]
    rmse = float(np.sqrt(np.mean((f_s[i][both] - f_r[j][both]) ** 2))) if both.any() else float("nan")
    return F0Result(rmse, float(np.mean(v_s[i] != v_r[j])))
