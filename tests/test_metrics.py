"""Objective measures with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tts_adapt.evaluate.metrics import analyse, compare, mcd_dtw

SR = 16000


def tone(freq: float, seconds: float = 1.0, harmonics: int = 4) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * freq * k * t) for k in range(1, harmonics + 1)).astype(np.float32)


def test_identical_audio_has_zero_mcd():
    x = tone(180.0) + 0.01 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    assert mcd_dtw(x, x, SR).mcd == pytest.approx(0.0, abs=1e-9)


def test_mcd_grows_with_spectral_difference_and_ignores_timing():
    x = tone(150.0)
    slower = np.interp(np.arange(int(1.3 * SR)) / 1.3, np.arange(SR), x).astype(np.float32)
    near = mcd_dtw(slower, x, SR).mcd  # same spectrum, different timing: DTW absorbs it
    far = mcd_dtw(tone(150.0, harmonics=1), x, SR).mcd  # different spectral envelope
    assert near < far


@pytest.mark.parametrize("semitones", [2, 5])
def test_tone_shifted_by_a_known_interval_gives_the_expected_f0_error(semitones):
    base = 200.0
    shifted = base * 2 ** (semitones / 12)
    result = compare(analyse(tone(shifted), SR), analyse(tone(base), SR))
    assert result["f0_rmse_hz"] == pytest.approx(shifted - base, rel=0.05)
    assert result["voicing_error"] < 0.05
