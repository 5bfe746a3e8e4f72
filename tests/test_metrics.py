"""Objective measures with known answers."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from tts_adapt.evaluate.metrics import GROSS_CENTS, Analysis, analyse, compare, f0_on_path, mcd_dtw, speaker_f0_range

SR = 16000
SENTENCE = ("The north wind and the sun were disputing which was the stronger, "
            "when a traveler came along wrapped in a warm cloak.")


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


@pytest.mark.parametrize("semitones", [-3, 2, 5])
def test_tone_shifted_by_a_known_interval_gives_the_expected_pitch_error(semitones):
    base = 200.0
    result = compare(analyse(tone(base * 2 ** (semitones / 12)), SR), analyse(tone(base), SR))
    assert set(result) == {"mcd_db", "f0_cents", "gpe", "vde"}
    assert result["f0_cents"] == pytest.approx(100.0 * abs(semitones), rel=0.1)
    assert result["gpe"] == 0.0
    assert result["vde"] < 0.05


def test_identical_audio_has_no_pitch_error():
    rng = np.random.default_rng(0)
    gap = 0.1 * rng.standard_normal(SR // 2).astype(np.float32)  # unvoiced in the middle
    x = np.concatenate([tone(140.0), gap, tone(230.0)]) + 0.001 * rng.standard_normal(5 * SR // 2).astype(np.float32)
    a = analyse(x, SR)
    assert a.voiced.dtype == bool and 0.2 < a.voiced.mean() < 0.95
    assert np.isnan(a.f0[~a.voiced]).all() and (a.f0[a.voiced] > 0).all()
    result = compare(a, analyse(x, SR))
    assert (result["f0_cents"], result["gpe"], result["vde"]) == (0.0, 0.0, 0.0)


def test_f0_has_one_value_per_mel_cepstrum_frame_centred_on_it():
    rng = np.random.default_rng(0)
    noise = [0.1 * rng.standard_normal(SR).astype(np.float32) for _ in range(2)]  # unvoiced, and not trimmed
    a = analyse(np.concatenate([noise[0], tone(200.0), noise[1]]), SR, f0_range=(60.0, 500.0))
    assert len(a.f0) == len(a.voiced) == len(a.mcep) == 1 + (3 * SR - 1024) // 256
    # mel-cepstrum frame k spans samples [256 k, 256 k + 1024): its centre is in the tone for k = 61 ... 122
    voiced = np.flatnonzero(a.voiced)
    assert abs(voiced.min() - 61) <= 1 and abs(voiced.max() - 122) <= 1 and len(voiced) >= 60
    assert np.nanmedian(a.f0) == pytest.approx(200.0, rel=0.02)


def test_gross_pitch_errors_are_octave_jumps_either_way_and_stay_out_of_the_fine_error():
    real = np.full(8, 200.0)
    #            octave up, octave down, 1.45x, 1.55x, 0.7x, 0.65x, exact, unvoiced
    synth = np.array([400.0, 100.0, 290.0, 310.0, 140.0, 130.0, 200.0, np.nan])
    mcep = np.zeros((8, 3))
    path = np.stack([np.arange(8), np.arange(8)], axis=1)
    result = f0_on_path(Analysis(mcep, synth, ~np.isnan(synth)), Analysis(mcep, real, np.ones(8, bool)), path)
    assert result.gpe == pytest.approx(4 / 7)  # 400, 100, 310 and 130 Hz
    fine = 1200.0 * np.log2(np.array([290.0, 140.0, 200.0]) / 200.0)
    assert result.cents == pytest.approx(float(np.sqrt(np.mean(fine ** 2))))
    assert result.vde == pytest.approx(1 / 8)
    assert GROSS_CENTS == pytest.approx(1200.0 * math.log2(1.5))
    none = f0_on_path(Analysis(mcep, np.full(8, np.nan), np.zeros(8, bool)), Analysis(mcep, real, np.ones(8, bool)),
                      path)
    assert math.isnan(none.cents) and math.isnan(none.gpe) and none.vde == 1.0


# --------------------------------------------------------------------------- speech
def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _read(path) -> np.ndarray:
    wav, sr = sf.read(str(path), dtype="float32")
    if sr != SR:
        import librosa

        wav = librosa.resample(wav, orig_sr=sr, target_sr=SR)
    return wav


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """flite renderings of one sentence at 16 kHz: slt (a high female voice) as spoken, slower
    (``duration_stretch`` 1.15), faster at the same pitch (sox ``tempo 1.1``), an octave up and down;
    kal16 (a low male voice) as spoken."""
    if shutil.which("flite") is None:
        pytest.skip("flite is installed by scripts/setup.sh")
    d = tmp_path_factory.mktemp("speech")
    _run("flite", "-voice", "slt", "-t", SENTENCE, "-o", str(d / "slt.wav"))
    _run("flite", "-voice", "slt", "--setf", "duration_stretch=1.15", "-t", SENTENCE, "-o", str(d / "slower.wav"))
    _run("flite", "-voice", "kal16", "-t", SENTENCE, "-o", str(d / "kal.wav"))
    out = {name: _read(d / f"{name}.wav") for name in ("slt", "slower", "kal")}
    if shutil.which("sox") is not None:
        _run("sox", str(d / "slt.wav"), str(d / "faster.wav"), "tempo", "1.1")
        for name, cents in (("up", "1200"), ("down", "-1200")):
            _run("sox", str(d / "slt.wav"), str(d / f"{name}.wav"), "pitch", cents, "rate", str(SR))
        out.update({name: _read(d / f"{name}.wav") for name in ("faster", "up", "down")})
    else:
        import librosa

        out["faster"] = librosa.effects.time_stretch(out["slt"], rate=1.1)
        for name, steps in (("up", 12), ("down", -12)):
            out[name] = librosa.effects.pitch_shift(out["slt"], sr=SR, n_steps=steps)
    return out


def _scores(speech: dict, name: str) -> dict[str, float]:
    """``speech[name]`` against the real slt clip, both tracked within slt's range."""
    f0_range = speaker_f0_range([speech["slt"]], SR)
    return compare(analyse(speech[name], SR, f0_range=f0_range), analyse(speech["slt"], SR, f0_range=f0_range))


@pytest.mark.parametrize("shift", ["up", "down"])
def test_speech_an_octave_off_is_a_gross_error_not_a_fine_one(speech, shift):
    result = _scores(speech, shift)
    assert result["gpe"] > 0.8
    assert math.isnan(result["f0_cents"]) or result["f0_cents"] < GROSS_CENTS  # gross errors are counted apart
    assert result["vde"] < 0.2  # the shifted clip is still tracked within the speaker's range, not left unvoiced


@pytest.mark.parametrize("rendering, max_cents", [("faster", 70.0), ("slower", 80.0)])
def test_two_renderings_of_a_sentence_by_one_voice_agree(speech, rendering, max_cents):
    result = _scores(speech, rendering)
    assert result["f0_cents"] < max_cents
    assert result["gpe"] < 0.02
    assert result["vde"] < 0.1


def test_speaker_f0_range_follows_the_voice(speech):
    ranges, medians = {}, {}
    for voice in ("slt", "kal"):
        ranges[voice] = speaker_f0_range([speech[voice]], SR)
        a = analyse(speech[voice], SR)
        medians[voice] = float(np.median(a.f0[a.voiced]))
        low, high = ranges[voice]
        # an octave either side of the speaker's typical pitch can still be tracked
        assert low <= medians[voice] / 2 and high >= 2 * medians[voice]
    assert medians["kal"] < 120 and medians["slt"] > 140
    assert ranges["slt"][0] > ranges["kal"][0] and ranges["slt"][1] > ranges["kal"][1]
    assert speaker_f0_range([np.zeros(SR, dtype=np.float32)], SR) == (40.0, 800.0)  # nothing voiced: the wide range
