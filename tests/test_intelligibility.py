"""The intelligibility measure: PocketSphinx transcripts of flite speech, the text normalisation, WER/CER
against jiwer, and the bootstrap interval."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest
import soundfile as sf
from conftest import flite_speech

from tts_adapt.data.audio import resample
from tts_adapt.evaluate.intelligibility import (
    RECOGNISER_RATE,
    Recogniser,
    bootstrap_interval,
    error_rates,
    normalise_text,
    transcribe_and_score,
    utterance_errors,
)

SENTENCE = "Please call me when you get home tonight."


@pytest.fixture(scope="module")
def recogniser() -> Recogniser:
    return Recogniser()


@pytest.fixture(scope="module")
def flite_clip(tmp_path_factory) -> tuple[np.ndarray, int]:
    """:data:`SENTENCE` spoken by flite's awb voice (16 kHz)."""
    return flite_speech(SENTENCE, tmp_path_factory.mktemp("flite") / "awb.wav", "awb")


def test_clear_speech_is_recognised(recogniser, flite_clip):
    wav, sr = flite_clip
    assert sr == RECOGNISER_RATE
    assert utterance_errors(SENTENCE, recogniser.transcribe(wav, sr))["wer"] <= 0.5


def test_each_sentence_is_decoded_on_its_own(recogniser, flite_clip):
    wav, sr = flite_clip
    first = recogniser.transcribe(wav, sr)
    recogniser.transcribe(np.random.default_rng(1).normal(0, 0.3, sr).astype(np.float32), sr)
    assert recogniser.transcribe(wav, sr) == first


def test_audio_at_another_rate_is_resampled(recogniser, flite_clip):
    wav, sr = flite_clip
    wav22 = resample(wav, sr, 22050)
    assert utterance_errors(SENTENCE, recogniser.transcribe(wav22, 22050))["wer"] <= 0.5
    # the same samples taken for 16 kHz audio are slowed down and lowered: the rate given matters
    assert utterance_errors(SENTENCE, recogniser.transcribe(wav22, RECOGNISER_RATE))["wer"] > 0.5


def test_a_file_is_read_at_the_recogniser_rate(recogniser, flite_clip, tmp_path):
    wav, sr = flite_clip
    path = tmp_path / "clip22.wav"
    sf.write(str(path), resample(wav, sr, 22050), 22050)
    assert utterance_errors(SENTENCE, recogniser.transcribe_file(path))["wer"] <= 0.5


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_no_speech_scores_badly(recogniser, kind):
    n = 2 * RECOGNISER_RATE
    wav = np.zeros(n, np.float32) if kind == "silence" else \
        np.random.default_rng(0).normal(0, 0.1, n).astype(np.float32)
    assert utterance_errors(SENTENCE, recogniser.transcribe(wav, RECOGNISER_RATE))["wer"] >= 0.9


def test_transcribe_and_score_keeps_the_raw_transcript(recogniser, flite_clip):
    wav, sr = flite_clip
    got = transcribe_and_score(recogniser, [wav], sr, [SENTENCE])
    assert got["utterances"][0]["transcript"] == recogniser.transcribe(wav, sr)
    assert got["wer"] == got["utterances"][0]["wer"]


@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", "hello world"),
    ("A well-known man -- or is it?", "a well known man or is it"),
    ("\u201cDon\u2019t,\u201d she said; 'twas late.", "don't she said twas late"),
    ("Dr. Smith has 2 cats", "doctor smith has two cats"),
    ("  many   spaces\n", "many spaces"),
])
def test_normalisation(text, expected):
    assert normalise_text(text) == expected


def test_a_reference_against_itself_has_no_errors():
    refs = ["The absence of fences created a mysterious intimacy.", "Is it 2 or 3?"]
    got = error_rates(refs, refs)
    assert got["wer"] == got["cer"] == 0.0
    assert got["wer_interval"] == got["cer_interval"] == [0.0, 0.0]
    # case, punctuation and spelt-out numbers are no errors either
    assert error_rates(refs, ["the absence of fences created a mysterious intimacy", "is it two or three"])["wer"] == 0


def test_rates_match_jiwer_and_hand_counts():
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["the cat sit on mat", "hello big world"]
    got = error_rates(refs, hyps)
    # utterance 1: one substitution (sat/sit) and one deletion (the); utterance 2: one insertion (big)
    assert [u["word_errors"] for u in got["utterances"]] == [2, 1]
    assert got["words"] == 8 and got["wer"] == pytest.approx(3 / 8)
    assert got["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert got["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert got["utterances"][0]["cer"] == pytest.approx(jiwer.cer(refs[0], hyps[0]))
    assert got["cer"] == pytest.approx(sum(u["char_errors"] for u in got["utterances"]) / got["chars"])


def test_bootstrap_interval_holds_the_estimate_and_repeats_for_a_seed():
    rng = np.random.default_rng(3)
    words = rng.integers(5, 15, size=40)
    errors = rng.binomial(words, 0.3)
    point = errors.sum() / words.sum()
    low, high = bootstrap_interval(errors, words, seed=7)
    assert low < point < high
    assert (low, high) == bootstrap_interval(errors, words, seed=7)
    assert (low, high) != bootstrap_interval(errors, words, seed=8)
    assert bootstrap_interval(errors, words, seed=7, confidence=0.5)[0] > low


def test_error_rates_interval_holds_the_estimate():
    refs = [f"sentence number {i} has these words" for i in range(1, 21)]
    hyps = [r if i % 3 else "sentence has words" for i, r in enumerate(refs)]
    got = error_rates(refs, hyps, seed=0)
    for key in ("wer", "cer"):
        low, high = got[f"{key}_interval"]
        assert low <= got[key] <= high
    assert got == error_rates(refs, hyps, seed=0)


def test_refusals():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no words"):
        utterance_errors("?!", "hello")
    with pytest.raises(ValueError, match="no utterances"):
        error_rates([], [])
