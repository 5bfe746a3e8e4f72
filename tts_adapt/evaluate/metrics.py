"""Objective measures of synthetic speech against real recordings.

* **MCD-DTW** (mel-cepstral distortion, dB): mel-cepstra of order 24
  (pysptk ``mcep`` on Blackman-windowed 1024-sample frames, all-pass constant
  from ``pysptk.util.mcepalpha``), speech frames only (leading/trailing
  silence trimmed with librosa), aligned by dynamic time warping (librosa);
  ``MCD = 10 / ln 10 * sqrt(2 * sum_{d=1..24} (c_d - c'_d)^2)`` averaged over the
  aligned path. The energy coefficient c_0 is left out, as usual.
* **Speaker similarity**: cosine of resemblyzer speaker embeddings.
* **Pitch**, on the same DTW-aligned frames: F0 by RAPT (pysptk, :func:`rapt_f0`) on the
  silence-trimmed waveform, one value per mel-cepstrum frame, searched within a range set per
  speaker from its real clips (:func:`speaker_f0_range`; 40-800 Hz without one):

  - **pitch error** ``f0_cents``: RMS of ``1200 * log2(F0_synth / F0_real)`` over the
    frames voiced in both that are not gross errors;
  - **gross pitch error** ``gpe``: share of the frames voiced in both whose F0 is more
    than a factor 1.5 from the real one in either direction (``|cents| > 1200 * log2 1.5``,
    about 702 cents), so octave jumps up and down both count;
  - **voicing decision error** ``vde``: share of the aligned frames whose voiced/unvoiced
    decisions differ.

  An error in Hz would be dominated by the few octave and voicing errors; in cents,
  with gross errors counted apart, the fine error says how close the intonation is and
  the gross error how often the pitch is wrong altogether. librosa's pYIN (:func:`f0_track`)
  stays as a reference for the benchmarks of trackers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import librosa
import numpy as np

MCEP_ORDER = 24
FRAME = 1024
HOP = 256
#: The wide F0 search range (Hz): the default of :func:`analyse`, and what :func:`speaker_f0_range`
#: tracks a speaker's real clips with before narrowing it.
F0_WIDE = (40.0, 800.0)
#: Ratio of F0s (synthetic / real) beyond which, in either direction, a frame is a gross pitch error.
GROSS_RATIO = 1.5
GROSS_CENTS = 1200.0 * math.log2(GROSS_RATIO)  # about 702 cents
#: :func:`speaker_f0_range`: the percentiles of a speaker's voiced F0, and the factor the range reaches
#: beyond them on each side (an octave, 2, and a margin of a major third, 1.25).
RANGE_PERCENTILES = (5.0, 95.0)
RANGE_FACTOR = 2.5


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


def wide_f0_range(sample_rate: int) -> tuple[float, float]:
    """:data:`F0_WIDE`, its top kept below the Nyquist frequency, as RAPT requires."""
    return F0_WIDE[0], min(F0_WIDE[1], 0.45 * sample_rate)


def rapt_f0(wav: np.ndarray, sample_rate: int, f0_range: tuple[float, float] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz with NaN where unvoiced, boolean voiced flags) per hop of 256 samples by RAPT (pysptk),
    frame ``i`` centred on sample ``i * HOP``; searched within ``f0_range`` (Hz, default :data:`F0_WIDE`).
    The tracker of the measures.

    RAPT's voicing decision depends on the level, so the signal is peak-normalised to the 16-bit
    range it expects (as the training features do); clips too short for it are padded with silence.
    """
    import pysptk

    low, high = wide_f0_range(sample_rate) if f0_range is None else f0_range
    if not 0 < low < high < sample_rate / 2:
        raise ValueError(f"F0 range must satisfy 0 < low < high < {sample_rate / 2:g} Hz, got {low}, {high}")
    x = np.asarray(wav, dtype=np.float64)
    n = -(-len(x) // HOP)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 0:
        x = x * (0.9 * 32767 / peak)
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    f0 = pysptk.rapt(x.astype(np.float32), fs=sample_rate, hopsize=HOP, min=float(low), max=float(high),
                     otype="f0")[:n].astype(np.float64)
    voiced = f0 > 0
    f0[~voiced] = np.nan
    return f0, voiced


def speaker_f0_range(wavs: Sequence[np.ndarray], sample_rate: int) -> tuple[float, float]:
    """The F0 search range (Hz) of one speaker, from real clips of theirs, for :func:`analyse`.

    Rule: the clips (silence trimmed) are tracked within the wide range (:data:`F0_WIDE`); with p5 and
    p95 the 5th and 95th percentiles of their voiced F0, the range is ``[p5 / 2.5, p95 * 2.5]``, kept
    within the wide range (the wide range itself when no frame is voiced).

    Why: a narrower search gives the tracker fewer wrong candidates -- a high voice searched from
    40 Hz can fall to a subharmonic, a low one searched up to 800 Hz can jump to a harmonic -- but
    it must not decide the measure: a synthesised clip an octave above or below the speaker (the
    error the gross pitch error counts) has to stay inside the range, or the tracker follows the
    sub- or super-harmonic that is inside it and reports the real pitch. A whole contour shifted by
    an octave needs ``[p5 / 2, p95 * 2]``, and RAPT needs a margin beyond that: it loses voicing on
    pitch close to the floor of its range (a voice at 166 Hz searched from 150 Hz is 20 % voiced
    instead of 77 %) and folds pitch above the ceiling to half. Measured on flite and espeak-ng voices
    (55-400 Hz) against copies of them shifted by an octave with sox: within ``[p5 / 2, p95 * 2]``
    an octave-up copy has up to a quarter of its frames fewer gross errors than within the wide range,
    and the voicing decisions of an octave-down copy of a high voice differ from the real clip's on
    30-80 % of the frames (under 12 % within the wide range); within ``[p5 / 2.5, p95 * 2.5]`` (an
    octave and a major third) the shifted copies score as within the wide range. The range still removes most of the wide search's
    octave jumps on the voices that have them (frames more than a fifth from the clip's median F0:
    3-4 % of the voiced frames within the wide range, under 1 % within the speaker's). Percentiles
    rather than extremes keep the tracker's own occasional octave errors on the real clips from
    widening the range.

    The floor is never below the wide one, 40 Hz, so an octave down from a voice under about 80 Hz
    falls below the range and shows as voicing decision errors rather than gross pitch errors. A
    30 Hz floor tracks such copies (a 74 Hz voice an octave down: gross errors 32 % -> 84 % of the
    frames), but folds more octave-up copies of the same voices back to the real pitch (93-95 % ->
    84-86 %).
    """
    wide = wide_f0_range(sample_rate)
    voiced = [f0[flags] for f0, flags in (rapt_f0(trim_silence(w), sample_rate, wide) for w in wavs)]
    f0 = np.concatenate(voiced) if voiced else np.zeros(0)
    if not len(f0):
        return wide
    p_low, p_high = np.percentile(f0, RANGE_PERCENTILES)
    return float(max(wide[0], p_low / RANGE_FACTOR)), float(min(wide[1], p_high * RANGE_FACTOR))


@dataclass(frozen=True)
class Analysis:
    """What the measures need of one waveform (silence trimmed): mel-cepstra ``(frames, order)``
    without c_0, and, when asked for, F0 in Hz (NaN where unvoiced) with boolean voiced flags, one
    per mel-cepstrum frame."""

    mcep: np.ndarray
    f0: np.ndarray | None = None
    voiced: np.ndarray | None = None


def analyse(wav: np.ndarray, sample_rate: int, pitch: bool = True,
            f0_range: tuple[float, float] | None = None) -> Analysis:
    """Mel-cepstra (and F0 with ``pitch``) of the speech part of ``wav``. Analysing real recordings
    once and comparing many syntheses with them saves most of the cost of an evaluation.

    F0 is tracked within ``f0_range`` (Hz; None: the wide :data:`F0_WIDE`): for comparisons, the
    speaker's range from :func:`speaker_f0_range`, the same for the synthetic clip and the real one.
    Its frames are those of the mel-cepstra: mel-cepstrum frame ``k`` spans samples
    ``[k * HOP, k * HOP + FRAME)``, and the F0 frame centred on it is taken.
    """
    wav = trim_silence(wav)
    mcep = mel_cepstrum(wav, sample_rate)[:, 1:]
    if not pitch:
        return Analysis(mcep)
    f0, _ = rapt_f0(wav, sample_rate, f0_range)
    shift = FRAME // (2 * HOP)
    aligned = np.full(len(mcep), np.nan)
    part = f0[shift:shift + len(mcep)]
    aligned[:len(part)] = part
    return Analysis(mcep, aligned, ~np.isnan(aligned))


def mcd_on_path(a: np.ndarray, b: np.ndarray, path: np.ndarray) -> float:
    diff = a[path[:, 0]] - b[path[:, 1]]
    return float(((10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff ** 2, axis=1))).mean())


@dataclass(frozen=True)
class F0Result:
    cents: float  # RMS pitch error (cents) over frames voiced in both, gross errors left out; NaN without any
    gpe: float  # gross pitch error: share of frames voiced in both more than GROSS_RATIO off; NaN without any
    vde: float  # voicing decision error: share of aligned frames with differing voicing decisions


def f0_on_path(synth: Analysis, real: Analysis, path: np.ndarray) -> F0Result:
    """Pitch error in cents, gross pitch error and voicing decision error of ``synth`` against ``real``
    on the aligned frames ``path`` (see the module's description)."""
    i = np.clip(path[:, 0], 0, len(synth.f0) - 1)
    j = np.clip(path[:, 1], 0, len(real.f0) - 1)
    vde = float(np.mean(synth.voiced[i] != real.voiced[j]))
    both = synth.voiced[i] & real.voiced[j]
    if not both.any():
        return F0Result(float("nan"), float("nan"), vde)
    cents = 1200.0 * np.log2(synth.f0[i][both] / real.f0[j][both])
    gross = np.abs(cents) > GROSS_CENTS
    fine = cents[~gross]
    rms = float(np.sqrt(np.mean(fine ** 2))) if len(fine) else float("nan")
    return F0Result(rms, float(np.mean(gross)), vde)


def compare(synth: Analysis, real: Analysis) -> dict[str, float]:
    """MCD-DTW (dB), and when both analyses have pitch the pitch error (cents), gross pitch error and
    voicing decision error, on one DTW path: keys ``mcd_db``, ``f0_cents``, ``gpe``, ``vde``."""
    path = dtw_path(synth.mcep, real.mcep)
    out = {"mcd_db": mcd_on_path(synth.mcep, real.mcep, path)}
    if synth.f0 is not None and real.f0 is not None:
        f0 = f0_on_path(synth, real, path)
        out.update(f0_cents=f0.cents, gpe=f0.gpe, vde=f0.vde)
    return out


def mcd_dtw(synth: np.ndarray, real: np.ndarray, sample_rate: int) -> MCDResult:
    """Mel-cepstral distortion (dB) of ``synth`` against ``real``, DTW-aligned, c_0 excluded."""
    a = analyse(synth, sample_rate, pitch=False).mcep
    b = analyse(real, sample_rate, pitch=False).mcep
    path = dtw_path(a, b)
    return MCDResult(mcd_on_path(a, b, path))


def f0_track(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz with NaN where unvoiced, voiced flags) per hop of 256 samples by librosa's pYIN over
    50-600 Hz, frame ``i`` centred on sample ``i * HOP``. A reference for the benchmarks of trackers;
    the measures track with :func:`rapt_f0`, a hundred times faster."""
    f0, voiced, _ = librosa.pyin(np.asarray(wav, dtype=np.float32), fmin=50.0, fmax=600.0, sr=sample_rate,
                                 frame_length=FRAME, hop_length=HOP)
    return f0, voiced
