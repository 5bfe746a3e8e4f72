"""Predicted naturalness (DNSMOS): flite speech against the same speech in noise and against noise alone,
determinism, the sample rate, short clips (repeated to the model's window) and refused audio."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import flite_speech

from tts_adapt.data.audio import resample
from tts_adapt.evaluate.naturalness import DNSMOS_RATE, WINDOW_SAMPLES, NaturalnessPredictor

SENTENCE = "The quick brown fox jumps over the lazy dog while the children watch from the garden."
KEYS = ("dnsmos", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808")


@pytest.fixture(scope="module")
def predictor() -> NaturalnessPredictor:
    return NaturalnessPredictor(threads=1)


@pytest.fixture(scope="module")
def flite_clip(tmp_path_factory) -> tuple[np.ndarray, int]:
    """:data:`SENTENCE` spoken by flite's slt voice (16 kHz, about 5 s)."""
    wav, sr = flite_speech(SENTENCE, tmp_path_factory.mktemp("flite") / "slt.wav", "slt")
    assert sr == DNSMOS_RATE
    return wav, sr


@pytest.fixture(scope="module")
def speech_score(predictor, flite_clip) -> dict:
    return predictor.score(*flite_clip)


def test_scores_are_floats_on_the_mos_scale(speech_score):
    for key in KEYS:
        assert isinstance(speech_score[key], float) and 1.0 <= speech_score[key] <= 5.0, (key, speech_score[key])


def test_clean_speech_beats_noisy_speech_and_noise(predictor, flite_clip, speech_score):
    wav, sr = flite_clip
    noise = np.random.default_rng(0).normal(0, 0.1, len(wav)).astype(np.float32)  # about 5 dB SNR over the clip
    noisy = predictor.score(np.clip(wav + noise, -1, 1), sr)
    pure_noise = predictor.score(noise, sr)
    assert speech_score["dnsmos"] > noisy["dnsmos"] + 0.4, (speech_score, noisy)
    assert speech_score["dnsmos"] > pure_noise["dnsmos"] + 0.8, (speech_score, pure_noise)
    # noise is what the background score rates
    assert speech_score["dnsmos_bak"] > noisy["dnsmos_bak"] + 1.0, (speech_score, noisy)


def test_scores_are_deterministic(predictor, flite_clip, speech_score):
    wav, sr = flite_clip
    assert predictor.score(wav, sr) == speech_score
    assert NaturalnessPredictor(threads=2).score(wav.copy(), sr) == pytest.approx(speech_score, abs=1e-5)


def test_agrees_with_speechmos(flite_clip, speech_score):
    """The same models and steps as speechmos's own runner, on a clip short enough that its window rounding
    does not drop windows (see the module docstring)."""
    dnsmos = pytest.importorskip("speechmos.dnsmos")
    wav, sr = flite_clip
    theirs = dnsmos.run(wav, sr)
    for mine, key in zip(KEYS, ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")):
        assert speech_score[mine] == pytest.approx(float(theirs[key]), abs=1e-4), (mine, speech_score, theirs)


def test_another_rate_is_resampled(predictor, flite_clip, speech_score):
    wav, sr = flite_clip
    at_22k = predictor.score(resample(wav, sr, 22050), 22050)
    for key in KEYS:
        assert at_22k[key] == pytest.approx(speech_score[key], abs=0.1), (key, at_22k, speech_score)


def test_a_short_clip_is_scored_as_its_repetition(predictor, flite_clip):
    wav, sr = flite_clip
    short = wav[int(0.5 * sr):int(0.8 * sr)]  # 0.3 s
    scores = predictor.score(short, sr)
    assert scores["dnsmos_repeats"] == 32 and scores["dnsmos_windows"] == 1  # 32 * 0.3 s = 9.6 s >= 9.01 s
    assert all(math.isfinite(scores[k]) and 1.0 <= scores[k] <= 5.0 for k in KEYS), scores
    looped = predictor.score(np.tile(short, 32), sr)
    assert looped["dnsmos_repeats"] == 1
    assert {k: looped[k] for k in KEYS} == {k: scores[k] for k in KEYS}


def test_a_window_long_clip_is_not_repeated(predictor, flite_clip):
    wav, sr = flite_clip
    clip = np.tile(wav, 2)[:WINDOW_SAMPLES]
    scores = predictor.score(clip, sr)
    assert scores["dnsmos_repeats"] == 1 and scores["dnsmos_windows"] == 1


def test_channels_are_mixed_down(predictor, flite_clip, speech_score):
    wav, sr = flite_clip
    assert predictor.score(np.stack([wav, wav]), sr) == speech_score


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_audio_is_refused(predictor, bad, message):
    wav = np.zeros(DNSMOS_RATE, np.float32)
    wav[100] = bad
    with pytest.raises(ValueError, match=message):
        predictor.score(wav, DNSMOS_RATE)


def test_empty_audio_is_refused(predictor):
    with pytest.raises(ValueError, match="empty"):
        predictor.score(np.zeros(0, np.float32), DNSMOS_RATE)


def test_models_load_once_and_only_when_needed(flite_clip):
    p = NaturalnessPredictor()
    assert p._sessions is None
    p.score(flite_clip[0][:DNSMOS_RATE], DNSMOS_RATE)
    sessions = p._sessions
    p.score(flite_clip[0][:DNSMOS_RATE], DNSMOS_RATE)
    assert sessions is not None and p._sessions is sessions
    assert all(path.is_file() and path.suffix == ".onnx" for path in p.model_paths().values())


@pytest.mark.parametrize("threads", [0, -1, 1.5])
def test_threads_must_be_a_positive_integer(threads):
    with pytest.raises(ValueError, match="threads"):
        NaturalnessPredictor(threads=threads)
