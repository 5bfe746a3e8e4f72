"""How sure a figure is, how it is written, and speaker identification: known answers."""

from __future__ import annotations

import json

import jiwer
import numpy as np
import pytest

from tts_adapt.evaluate.identification import VoicePrints
from tts_adapt.evaluate.intelligibility import utterance_errors
from tts_adapt.evaluate.measures import (MEASURES, bootstrap_mean, bootstrap_ratio, interval_excludes_zero,
                                         paired_bootstrap, significant, summarise_rows)


def test_bootstrap_interval_holds_the_mean_narrows_with_more_utterances_and_repeats():
    rng = np.random.default_rng(1)
    few, many = rng.normal(5.0, 1.0, 10), rng.normal(5.0, 1.0, 400)
    mean, (low, high) = bootstrap_mean(few)
    assert low < mean < high and mean == pytest.approx(few.mean())
    _, (low_many, high_many) = bootstrap_mean(many)
    assert high_many - low_many < (high - low) / 3  # width falls as 1/sqrt(n): 10 -> 400 is about 6x
    assert bootstrap_mean(few) == bootstrap_mean(few)


def test_bootstrap_coverage_is_near_the_nominal_95_percent():
    rng = np.random.default_rng(7)
    trials = 200
    held = 0
    for k in range(trials):
        _, (low, high) = bootstrap_mean(rng.normal(0.0, 1.0, 40), resamples=500, seed=k)
        held += low <= 0.0 <= high
    assert 0.88 <= held / trials <= 0.99


def test_missing_values_are_left_out_and_nothing_gives_no_figure():
    assert bootstrap_mean([None, float("nan")]) == (None, [None, None])
    mean, (low, high) = bootstrap_mean([2.0, None, float("nan"), 4.0])
    assert mean == 3.0 and 2.0 <= low <= high <= 4.0


def test_word_error_rate_is_jiwers_corpus_rate_with_an_interval():
    refs = ["the cat sat on the mat", "a quick brown fox", "hello there world"]
    hyps = ["the cat sat on mat", "a quick brown box jumps", "hello world"]
    rows = [utterance_errors(r, h) for r, h in zip(refs, hyps)]
    wer, (low, high) = summarise_rows(rows, "wer")
    assert wer == pytest.approx(jiwer.wer(refs, hyps))
    assert low <= wer <= high
    cer, _ = summarise_rows(rows, "cer")
    assert cer == pytest.approx(jiwer.cer(refs, hyps))
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ratio([1, 2], [3])


def test_paired_change_of_identical_models_is_zero_and_a_shift_is_found_exactly():
    rng = np.random.default_rng(2)
    base = [{"mcd_db": float(v)} for v in rng.normal(7.0, 1.0, 20)]
    same, ci = paired_bootstrap(base, base, "mcd_db")
    assert same == 0.0 and ci == [0.0, 0.0] and not interval_excludes_zero(ci)
    shifted = [{"mcd_db": r["mcd_db"] + 0.5} for r in base]
    change, ci = paired_bootstrap(shifted, base, "mcd_db")
    assert change == pytest.approx(0.5) and ci == pytest.approx([0.5, 0.5]) and interval_excludes_zero(ci)
    # unpaired noise as large as the shift would hide it; pairing removes the speaker-to-speaker spread
    noisy = [{"mcd_db": r["mcd_db"] + 0.5 + float(e)} for r, e in zip(base, rng.normal(0, 0.1, 20))]
    change, ci = paired_bootstrap(noisy, base, "mcd_db")
    assert interval_excludes_zero(ci) and ci[0] < change < ci[1]
    with pytest.raises(ValueError, match="pairs must match"):
        paired_bootstrap(base[:3], base, "mcd_db")


def test_paired_change_of_a_word_error_rate_is_the_difference_of_the_two_rates():
    a = [{"word_errors": 2, "words": 10}, {"word_errors": 0, "words": 5}]
    b = [{"word_errors": 1, "words": 10}, {"word_errors": 1, "words": 5}]
    change, (low, high) = paired_bootstrap(a, b, "wer")
    assert change == pytest.approx(2 / 15 - 2 / 15)
    assert low <= change <= high


@pytest.mark.parametrize("value, digits, text", [(119.0, 2, "119"), (0.00733, 3, "0.00733"), (2.4213, 3, "2.42"),
                                                 (-0.0000272, 3, "-0.0000272"), (0.0, 3, "0")])
def test_figures_are_written_in_significant_digits_never_in_exponent_notation(value, digits, text):
    got = significant(value, digits, max_decimals=7)
    assert got == text and "e" not in got


def test_fractions_are_shown_as_percentages_and_direction_decides_better():
    wer, sim = MEASURES["wer"], MEASURES["similarity"]
    assert wer.format(0.372) == "37 %" and wer.format(None) == "–"
    assert wer.better(-0.1) is True and sim.better(-0.1) is False and sim.better(0.0) is None


class _FakeEncoder:
    """Embeds a clip file by the vector stored in it: voice prints of known directions."""

    def __init__(self):
        self.calls = 0

    def embed_speaker(self, paths):
        self.calls += 1
        v = np.mean([np.load(p) for p in paths], axis=0)
        return v / np.linalg.norm(v)


def test_identification_ranks_the_true_voice_and_counts_ties_against_it():
    prints = VoicePrints(["a", "b", "c"], np.eye(3, dtype=np.float32))
    assert prints.identify(np.array([0.9, 0.1, 0.0]), "a") == {"id_rank": 1.0, "id_top1": 1.0, "id_best": "a"}
    got = prints.identify(np.array([0.1, 0.9, 0.5]), "a")
    assert got["id_rank"] == 3.0 and got["id_top1"] == 0.0 and got["id_best"] == "b"
    assert prints.identify(np.array([1.0, 1.0, 0.0]), "a")["id_rank"] == 2.0  # a tie is not an identification
    with pytest.raises(KeyError, match="no voice print"):
        prints.identify(np.ones(3), "z")
    with pytest.raises(ValueError, match="at least two voices"):
        VoicePrints(["a"], np.eye(1))


def test_voice_prints_are_cached_on_disk_and_refreshed_when_a_clip_changes(tmp_path):
    clips = {}
    for k, name in enumerate(("a", "b", "c")):
        paths = []
        for j in range(2):
            p = tmp_path / f"{name}{j}.npy"
            np.save(p, np.eye(3)[k] + 0.01 * j)
            paths.append(p)
        clips[name] = paths
    encoder = _FakeEncoder()
    first = VoicePrints.from_clips(clips, encoder, cache_dir=tmp_path / "cache")
    assert encoder.calls == 3 and first.names == ["a", "b", "c"]
    again = VoicePrints.from_clips(clips, encoder, cache_dir=tmp_path / "cache")
    assert encoder.calls == 3 and np.array_equal(again.prints, first.prints)
    np.save(clips["a"][0], np.eye(3)[1] * 2.0)  # rewritten: the key changes
    VoicePrints.from_clips(clips, encoder, cache_dir=tmp_path / "cache")
    assert encoder.calls == 6
    cached = list((tmp_path / "cache" / "evaluations").glob("voiceprints-*.npz"))
    assert len(cached) == 2 and json.dumps(sorted(p.suffix for p in cached)) == '[".npz", ".npz"]'
