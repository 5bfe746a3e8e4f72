"""The measures of an evaluation: what each one is, how it is written, and how sure a figure is.

Every measure is scored per utterance (a synthesised clip against the real recording of the same
sentence), so that every figure of a report, a mean over utterances, carries a percentile bootstrap
interval over utterances (:func:`bootstrap_mean`; word and character error rates are ratios of sums,
:func:`bootstrap_ratio`), and a change between two models scored on the same utterances carries the
interval of the paired differences (:func:`paired_bootstrap`).

:data:`MEASURES` is the one table of names, labels, units, directions and definitions that the
reports, the sweep, the quickstart and the demo read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Resamples of every bootstrap interval, its coverage and its seed (intervals repeat exactly).
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Measure:
    """One measure: ``key`` in report.json, a readable ``label`` and ``unit``, whether lower is better,
    the significant digits it is shown with, the measure on ``real`` recordings when it applies to one
    clip alone (the floor or ceiling a model is compared with), and its definition."""

    key: str
    label: str
    unit: str
    lower_is_better: bool
    definition: str
    digits: int = 3
    real: bool = False  # also scored on the real recordings: the floor / ceiling
    percent: bool = False  # a fraction shown as a percentage

    def format(self, value: float | None, *, signed: bool = False) -> str:
        """``value`` with the measure's significant digits (a fraction as a percentage), ``–`` when missing;
        never in exponent notation (``119``, ``0.00733``, ``-0.0001``)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return significant(100.0 * value if self.percent else value, self.digits, signed=signed) + \
            (" %" if self.percent else "")

    def better(self, change: float | None) -> bool | None:
        """Is a change (adapted - base) an improvement? None when there is none."""
        if change is None or (isinstance(change, float) and math.isnan(change)) or change == 0:
            return None
        return (change < 0) == self.lower_is_better


def significant(value: float, digits: int, *, signed: bool = False, max_decimals: int = 5) -> str:
    """``value`` rounded to ``digits`` significant digits in fixed-point notation (whole numbers are never cut:
    ``119`` stays ``119`` at two digits), at most ``max_decimals`` decimals."""
    decimals = 0
    if value != 0 and math.isfinite(value):
        decimals = min(max_decimals, max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


_MEASURES = [
    Measure("mcd_db", "MCD-DTW", "dB", True, digits=3, definition=(
        "mel-cepstral distortion: order-24 mel-cepstra (pysptk mcep, all-pass constant from pysptk.util.mcepalpha), "
        "c0 excluded, leading/trailing silence trimmed, frames aligned by DTW (librosa); "
        "10/ln10 * sqrt(2 * sum_d (c_d - c'_d)^2) averaged over the path")),
    Measure("f0_cents", "pitch error", "cents", True, digits=3, definition=(
        "RMS of 1200 * log2(F0_synth / F0_real) over the DTW-aligned frames voiced in both, gross errors left out "
        "(they are counted by the gross pitch error); F0 by RAPT with the tracker's range set per speaker from "
        "its real clips")),
    Measure("gpe", "gross pitch error", "% of frames", True, digits=2, percent=True, definition=(
        "share of the DTW-aligned frames voiced in both whose F0 is more than a factor 1.5 off the real one in "
        "either direction (more than 702 cents: 50 % too high or 33 % too low; octave jumps up and down "
        "included)")),
    Measure("vde", "voicing decision error", "% of frames", True, digits=2, percent=True, definition=(
        "share of the DTW-aligned frames whose voiced/unvoiced decisions differ")),
    Measure("wer", "word error rate", "%", True, digits=2, percent=True, real=True, definition=(
        "PocketSphinx (en-us, 16 kHz, each clip decoded alone) against the sentence, both normalised as the "
        "synthesiser reads it; all word errors (substitutions, deletions, insertions) over all reference words. "
        "The real column is the recogniser's floor: its rate on the real recordings of the same sentences")),
    Measure("cer", "character error rate", "%", True, digits=2, percent=True, real=True, definition=(
        "as the word error rate, on characters")),
    Measure("dnsmos", "DNSMOS overall", "1–5", False, digits=3, real=True, definition=(
        "predicted overall quality (DNSMOS P.835 OVRL, the speechmos package's ONNX model, 16 kHz); the real "
        "column scores the real recordings")),
    Measure("similarity", "speaker similarity", "cosine", False, digits=3, real=True, definition=(
        "cosine of the resemblyzer embedding of each clip with the mean embedding of the speaker's real held-out "
        "recordings; the real column scores each real clip against the others of its speaker")),
    Measure("id_top1", "speaker identified", "% of clips", False, digits=3, percent=True, real=True, definition=(
        "share of clips whose embedding is closer to the speaker's voice print than to any other voice of the "
        "evaluation (target, old, unseen and the corpus's other speakers; voice prints from clips that are not "
        "evaluated)")),
    Measure("id_rank", "rank of the true voice", "1 = best", True, digits=3, real=True, definition=(
        "mean rank of the speaker's own voice print among all voices, by cosine with the clip's embedding")),
    Measure("mel_loss", "mel loss", "teacher-forced", True, digits=3, definition=(
        "teacher-forced training loss of the acoustic model on each real held-out recording (FastPitch: its L1 "
        "mel term in normalised log-mel units)")),
]
MEASURES: dict[str, Measure] = {m.key: m for m in _MEASURES}
#: Measures that are a ratio of summed counts (errors over reference words or characters), not a mean.
RATIOS = {"wer": ("word_errors", "words"), "cer": ("char_errors", "chars")}


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)


def _percentiles(samples: np.ndarray, confidence: float) -> list[float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _picks(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_mean(values: Sequence[float | None], *, confidence: float = CONFIDENCE,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float | None, list]:
    """(mean, [low, high]) of ``values`` (None / NaN left out), the interval a percentile bootstrap over them.
    With no value: (None, [None, None]); with one: the value and a degenerate interval."""
    v = _clean(values)
    if not len(v):
        return None, [None, None]
    means = v[_picks(len(v), resamples, seed)].mean(axis=1)
    return float(v.mean()), _percentiles(means, confidence)


def bootstrap_ratio(errors: Sequence[float], totals: Sequence[float], *, confidence: float = CONFIDENCE,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float | None, list]:
    """(sum(errors) / sum(totals), [low, high]) with a percentile bootstrap over the utterances (pairs)."""
    e, t = np.asarray(errors, dtype=np.float64), np.asarray(totals, dtype=np.float64)
    if e.shape != t.shape:
        raise ValueError(f"errors and totals differ in length: {e.shape} and {t.shape}")
    if not len(e) or t.sum() <= 0:
        return None, [None, None]
    picks = _picks(len(e), resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = e[picks].sum(axis=1) / t[picks].sum(axis=1)
    return float(e.sum() / t.sum()), _percentiles(ratios[np.isfinite(ratios)], confidence)


def paired_bootstrap(adapted: Sequence[dict], base: Sequence[dict], key: str, *, confidence: float = CONFIDENCE,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float | None, list]:
    """Change of measure ``key`` (adapted - base) over utterance rows paired by position, with the percentile
    bootstrap interval of the same resampled utterances in both. A ratio measure (:data:`RATIOS`) changes as
    the difference of the two ratios; a mean measure as the mean of the paired differences (pairs where
    either is missing are left out)."""
    if len(adapted) != len(base):
        raise ValueError(f"{len(adapted)} adapted rows but {len(base)} base rows: the pairs must match")
    if key in RATIOS:
        err, tot = RATIOS[key]
        rows = [(a, b) for a, b in zip(adapted, base) if a.get(tot) and b.get(tot)]
        if not rows:
            return None, [None, None]
        m = np.asarray([[a[err], a[tot], b[err], b[tot]] for a, b in rows], dtype=np.float64)
        picks = _picks(len(m), resamples, seed)
        s = m[picks].sum(axis=1)  # (resamples, 4)
        change = m[:, 0].sum() / m[:, 1].sum() - m[:, 2].sum() / m[:, 3].sum()
        return float(change), _percentiles(s[:, 0] / s[:, 1] - s[:, 2] / s[:, 3], confidence)
    diffs = [a.get(key) - b.get(key) for a, b in zip(adapted, base)
             if a.get(key) is not None and b.get(key) is not None
             and not (math.isnan(a[key]) or math.isnan(b[key]))]
    return bootstrap_mean(diffs, confidence=confidence, resamples=resamples, seed=seed)


def summarise_rows(rows: Sequence[dict], key: str, **kwargs) -> tuple[float | None, list]:
    """The figure of measure ``key`` over utterance rows, with its interval (a ratio of sums for WER / CER, a
    mean otherwise)."""
    if key in RATIOS:
        err, tot = RATIOS[key]
        scored = [r for r in rows if r.get(tot)]
        return bootstrap_ratio([r[err] for r in scored], [r[tot] for r in scored], **kwargs)
    return bootstrap_mean([r.get(key) for r in rows], **kwargs)


def interval_excludes_zero(interval: Sequence[float | None]) -> bool:
    """Is a change's interval wholly on one side of zero (a difference outside the noise)?"""
    low, high = interval
    return low is not None and high is not None and (low > 0 or high < 0)


def verdict(metric: str, change: float | None, interval) -> str | None:
    """``better``, ``worse`` or ``tie`` for a change (adapted - base) of measure ``metric`` by its 95 % interval:
    better or worse only when the interval lies wholly on one side of zero (a difference inside the noise is
    a tie); None when it cannot be judged (no change, no interval, a measure of unknown direction)."""
    measure = MEASURES.get(metric)
    if measure is None or change is None or interval is None or None in interval:
        return None
    if not interval_excludes_zero(interval):
        return "tie"
    return "better" if measure.better(interval[0] if interval[0] > 0 else interval[1]) else "worse"
