"""Dataset readers on tiny generated datasets in each dataset's real layout.

Every fixture is written by the tests (numpy + soundfile, 0.8 s tones), so the
file runs offline in a few seconds.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tts_adapt.data import readers
from tts_adapt.data.audio import AudioError, load_audio, wav_header_frames
from tts_adapt.data.corpus.build import MANIFEST_FIELDS
from tts_adapt.data.readers import (
    DATASET_READERS,
    DatasetLayoutError,
    detect_layout,
    read_dataset,
    register_reader,
)
from tts_adapt.data.samples import BadInputError, InputReport, Utterance
from tts_adapt.data.validation import AudioChecks, check_text, speakable

SECONDS = 0.8


# --------------------------------------------------------------------------- fixture writers


def tone(path: Path, *, sr: int = 16000, channels: int = 1, seconds: float = SECONDS, silent: bool = False) -> Path:
    """Write a sine-plus-noise tone (or digital silence); format from the extension (.wav/.flac)."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    t = np.arange(int(round(sr * seconds))) / sr
    x = 0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.01 * rng.standard_normal(t.size)
    if silent:
        x = np.zeros_like(x)
    data = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1) if channels > 1 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sr)
    return path


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def make_vctk(root: Path) -> Path:
    """VCTK 0.92: 48 kHz FLAC for mic1 and mic2; p280 has mic1 only (as in the real corpus)."""
    for spk, utts in {"p225": {"001": "Please call Stella.", "002": "Ask her to bring these things."},
                      "p226": {"001": "Six spoons of fresh snow peas."}}.items():
        for n, text in utts.items():
            write(root / "txt" / spk / f"{spk}_{n}.txt", text + "\n")
            for mic in ("mic1", "mic2"):
                tone(root / "wav48_silence_trimmed" / spk / f"{spk}_{n}_{mic}.flac", sr=48000)
    write(root / "txt" / "p280" / "p280_001.txt", "Five thick slabs of blue cheese.\n")
    tone(root / "wav48_silence_trimmed" / "p280" / "p280_001_mic1.flac", sr=48000)
    write(root / "README.txt", "VCTK 0.92\n")
    write(root / "speaker-info.txt", "ID AGE GENDER ACCENTS\n")
    return root


def make_vctk_old(root: Path) -> Path:
    for n, text in {"001": "Please call Stella.", "002": "Ask her to bring these things."}.items():
        write(root / "txt" / "p225" / f"p225_{n}.txt", text + "\n")
        tone(root / "wav48" / "p225" / f"p225_{n}.wav", sr=48000)
    return root


LIBRITTS = {  # (subset, speaker, chapter, utterance): (normalized, original)
    ("train-clean-100", "84", "121550", "000007_000000"): ("It's fifty dollars sir.", "It's $50 sir."),
    ("train-clean-100", "84", "121550", "000008_000001"): ("Call me at five P M.", "Call me at 5pm."),
    ("dev-clean", "1272", "128104", "000001_000000"): ("Mister Quilter is the apostle.", "Mr. Quilter is the apostle."),
}


def make_libritts(root: Path, *, subsets: bool = True) -> Path:
    """24 kHz wavs with .normalized.txt, .original.txt and the chapter's trans.tsv."""
    for (subset, spk, chapter, n), (normalized, original) in LIBRITTS.items():
        d = (root / subset if subsets else root) / spk / chapter
        stem = f"{spk}_{chapter}_{n}"
        tone(d / f"{stem}.wav", sr=24000)
        write(d / f"{stem}.normalized.txt", normalized)
        write(d / f"{stem}.original.txt", original)  # has '$' and digits: must not be the text used
        with open(d / f"{spk}_{chapter}.trans.tsv", "a", encoding="utf-8") as fh:
            fh.write(f"{stem}\t{original}\t{normalized}\n")
    return root


def make_ljspeech(root: Path) -> Path:
    rows = [("LJ001-0001", "It'll be $16 sir.", "It'll be sixteen dollars sir."),
            ("LJ001-0002", "Mr. Smith's 2nd car.", "Mister Smith's second car.")]
    write(root / "metadata.csv", "".join(f"{i}|{raw}|{norm}\n" for i, raw, norm in rows))
    for i, _, _ in rows:
        tone(root / "wavs" / f"{i}.wav", sr=22050)
    write(root / "README", "LJ Speech Dataset\n")
    return root


def make_custom_folder(root: Path) -> Path:
    for stem, text in {"hello": "Hello there.", "second": "A second sentence."}.items():
        tone(root / f"{stem}.wav")
        write(root / f"{stem}.txt", text + "\n")
    return root


def make_custom_meta2(root: Path) -> Path:
    tone(root / "clips" / "one.wav")
    tone(root / "two.wav")
    write(root / "metadata.csv", "file|text\nclips/one.wav|The first clip.\ntwo|The second clip.\n")
    return root


def make_custom_meta3(root: Path) -> Path:
    tone(root / "a.wav")
    tone(root / "b.wav")
    write(root / "metadata.csv", "a.wav|alice|Hi Alice.\nb.wav|bob|Hi Bob.\n")
    return root


TTS_ADAPT_ROWS = [  # utt_id, speaker, speaker_set, split, text
    ("spk00_001", "spk00", "pretrain", "heldout", "The parallel sentence."),
    ("spk00_006", "spk00", "pretrain", "train", "A pretraining sentence."),
    ("spk01_001", "spk01", "unseen", "heldout", "The parallel sentence."),
    ("spk02_006", "spk02", "target", "train", "An adaptation sentence."),
]


def make_tts_adapt(root: Path) -> Path:
    """The embedded corpus layout: wav/<spk>/<utt>.wav, txt/<spk>/<utt>.txt, manifest.csv."""
    rows = []
    for utt, spk, sset, split, text in TTS_ADAPT_ROWS:
        tone(root / "wav" / spk / f"{utt}.wav")
        write(root / "txt" / spk / f"{utt}.txt", text + "\n")
        rows.append({"utt_id": utt, "speaker": spk, "speaker_set": sset, "split": split,
                     "parallel": int(utt.endswith("_001")), "duration": SECONDS,
                     "audio": f"wav/{spk}/{utt}.wav", "text": text})
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    write(root / "corpus.json", "{}\n")
    return root


# --------------------------------------------------------------------------- registry


def test_registry_has_the_builtin_readers():
    assert set(DATASET_READERS) == {"vctk", "libritts", "ljspeech", "custom", "tts_adapt"}


def test_register_reader_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="'vctk' is already registered"):
        register_reader("vctk")(lambda root, report: [])


def test_unknown_layout_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset layout 'timit'") as err:
        read_dataset(make_custom_folder(tmp_path / "ds"), layout="timit")
    assert "custom, libritts, ljspeech, tts_adapt, vctk" in str(err.value)


def test_a_registered_reader_is_used_by_read_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "DATASET_READERS", dict(readers.DATASET_READERS))
    monkeypatch.setattr(readers, "_LAYOUTS", dict(readers._LAYOUTS))
    wav = tone(tmp_path / "ds" / "x.wav")

    @register_reader("one_file", expected="one x.wav")
    def read_one(root, report):
        return [Utterance(audio_path=str(root / "x.wav"), text="Just one.", speaker="me", utt_id="x")]

    utts, report = read_dataset(tmp_path / "ds", layout="one_file")
    assert [(u.audio_path, u.duration) for u in utts] == [(str(wav), SECONDS)]
    # no detect function: never picked by "auto"
    assert detect_layout(tmp_path / "ds") == "custom"


# --------------------------------------------------------------------------- each reader


READER_CASES = [
    # id, builder, layout, reader kwargs, expected {(utt_id, speaker, text, split)}, audio path suffix
    ("vctk-mic1", make_vctk, "vctk", {}, {
        ("p225_001", "p225", "Please call Stella.", None),
        ("p225_002", "p225", "Ask her to bring these things.", None),
        ("p226_001", "p226", "Six spoons of fresh snow peas.", None),
        ("p280_001", "p280", "Five thick slabs of blue cheese.", None)}, "_mic1.flac"),
    # p280 has no mic2: coqui would substitute its mic1 file; we leave p280 out
    ("vctk-mic2", make_vctk, "vctk", {"mic": "mic2"}, {
        ("p225_001", "p225", "Please call Stella.", None),
        ("p225_002", "p225", "Ask her to bring these things.", None),
        ("p226_001", "p226", "Six spoons of fresh snow peas.", None)}, "_mic2.flac"),
    ("vctk-old", make_vctk_old, "vctk", {}, {
        ("p225_001", "p225", "Please call Stella.", None),
        ("p225_002", "p225", "Ask her to bring these things.", None)}, ".wav"),
    ("libritts-subsets", make_libritts, "libritts", {}, {
        ("84_121550_000007_000000", "84", "It's fifty dollars sir.", "train-clean-100"),
        ("84_121550_000008_000001", "84", "Call me at five P M.", "train-clean-100"),
        ("1272_128104_000001_000000", "1272", "Mister Quilter is the apostle.", "dev-clean")}, ".wav"),
    ("libritts-flat", lambda r: make_libritts(r, subsets=False), "libritts", {}, {
        ("84_121550_000007_000000", "84", "It's fifty dollars sir.", None),
        ("84_121550_000008_000001", "84", "Call me at five P M.", None),
        ("1272_128104_000001_000000", "1272", "Mister Quilter is the apostle.", None)}, ".wav"),
    ("ljspeech", make_ljspeech, "ljspeech", {}, {
        ("LJ001-0001", "ljspeech", "It'll be sixteen dollars sir.", None),
        ("LJ001-0002", "ljspeech", "Mister Smith's second car.", None)}, ".wav"),
    ("ljspeech-name", make_ljspeech, "ljspeech", {"name": "linda"}, {
        ("LJ001-0001", "linda", "It'll be sixteen dollars sir.", None),
        ("LJ001-0002", "linda", "Mister Smith's second car.", None)}, ".wav"),
    ("custom-folder", make_custom_folder, "custom", {}, {
        ("hello", "ds", "Hello there.", None), ("second", "ds", "A second sentence.", None)}, ".wav"),
    ("custom-folder-speaker", make_custom_folder, "custom", {"speaker": "anna"}, {
        ("hello", "anna", "Hello there.", None), ("second", "anna", "A second sentence.", None)}, ".wav"),
    ("custom-metadata-2col-header", make_custom_meta2, "custom", {}, {
        ("one", "ds", "The first clip.", None), ("two", "ds", "The second clip.", None)}, ".wav"),
    ("custom-metadata-3col", make_custom_meta3, "custom", {}, {
        ("a", "alice", "Hi Alice.", None), ("b", "bob", "Hi Bob.", None)}, ".wav"),
    ("tts_adapt", make_tts_adapt, "tts_adapt", {}, {
        (u, s, t, f"{ss}/{sp}") for u, s, ss, sp, t in TTS_ADAPT_ROWS}, ".wav"),
    ("tts_adapt-target", make_tts_adapt, "tts_adapt", {"speaker_sets": ["target"]}, {
        ("spk02_006", "spk02", "An adaptation sentence.", "target/train")}, ".wav"),
    ("tts_adapt-heldout", make_tts_adapt, "tts_adapt", {"speaker_sets": ["pretrain", "unseen"], "splits": "heldout"}, {
        ("spk00_001", "spk00", "The parallel sentence.", "pretrain/heldout"),
        ("spk01_001", "spk01", "The parallel sentence.", "unseen/heldout")}, ".wav"),
]


@pytest.mark.parametrize("build,layout,kwargs,expected,suffix",
                         [c[1:] for c in READER_CASES], ids=[c[0] for c in READER_CASES])
def test_reader_reads_its_layout(tmp_path, build, layout, kwargs, expected, suffix):
    root = build(tmp_path / "ds")
    assert detect_layout(root) == layout

    utts, report = read_dataset(root, **kwargs)

    assert report.skipped == []
    # 48/24/22.05 kHz sources are converted, and only that is noted
    assert {n.category for n in report.notes} <= {"resampled"}
    assert {(u.utt_id, u.speaker, u.text, u.split) for u in utts} == expected
    for u in utts:
        assert Path(u.audio_path).is_absolute() and Path(u.audio_path).is_file()
        assert u.audio_path.endswith(suffix)
        assert u.duration == pytest.approx(SECONDS, abs=1e-3)
    # naming the layout gives the same result as detecting it
    explicit, _ = read_dataset(root, layout, validate_audio=False, **kwargs)
    assert [u.audio_path for u in explicit] == [u.audio_path for u in utts]


def test_unknown_speaker_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="speaker_sets: unknown value.*'adapt'.*pretrain, unseen, target"):
        read_dataset(make_tts_adapt(tmp_path / "ds"), speaker_sets=["adapt"])


def test_without_audio_validation_durations_are_not_measured(tmp_path):
    root = make_custom_folder(tmp_path / "ds")
    write(root / "corrupt.wav", b"\x01\x02" * 500)
    write(root / "corrupt.txt", "Never opened.")
    tone(root / "untranscribed.wav")
    utts, report = read_dataset(root, validate_audio=False)
    # corrupt audio is not opened, but the missing transcript is the reader's finding
    assert sorted(u.utt_id for u in utts) == ["corrupt", "hello", "second"]
    assert all(u.duration is None for u in utts)
    assert [(b.path, b.category) for b in report.skipped] == [(str(root / "untranscribed.wav"), "missing transcript")]
    # the embedded corpus keeps the manifest's durations
    utts, _ = read_dataset(make_tts_adapt(tmp_path / "corpus"), validate_audio=False)
    assert {u.duration for u in utts} == {SECONDS}


def test_parallel_validation_matches_serial(tmp_path):
    root = tmp_path / "ds"
    for i in range(5):
        tone(root / f"u{i}.wav", silent=(i == 2))
        write(root / f"u{i}.txt", f"Sentence number {i}.")
    serial, rep1 = read_dataset(root)
    parallel, rep2 = read_dataset(root, workers=2)
    assert parallel == serial
    assert [b.path for b in rep2.skipped] == [b.path for b in rep1.skipped] == [str(root / "u2.wav")]


def test_a_given_report_is_extended(tmp_path):
    report = InputReport("skip")
    report.note("/elsewhere.wav", "resampled 8000 Hz to 16000 Hz", "resampled")
    root = make_custom_folder(tmp_path / "ds")
    tone(root / "lonely.wav")
    _, same = read_dataset(root, report=report)
    assert same is report and len(report.notes) == 1 and len(report.skipped) == 1


# --------------------------------------------------------------------------- bad input


@dataclass
class BadCase:
    id: str
    build: object  # (root) -> path of the one bad file (as reported)
    category: str
    reason: str  # must appear in the reported reason
    checks: AudioChecks | None = None


def truncated(path: Path, seconds: float = 2.8) -> Path:
    """A WAV written by soundfile, then cut to half its bytes with its header unchanged (an interrupted copy)."""
    tone(path, seconds=seconds)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _custom_with(bad_stem: str, *, audio=None, text: str | None = "Hello again."):
    """A custom folder with one good utterance and one bad one."""
    def build(root: Path) -> Path:
        make_custom_folder(root)
        wav = root / f"{bad_stem}.wav"
        if audio is not None:
            audio(wav)
        if text is not None:
            write(wav.with_suffix(".txt"), text)
        return wav
    return build


def _ljspeech_missing_wav(root: Path) -> Path:
    make_ljspeech(root)
    with open(root / "metadata.csv", "a", encoding="utf-8") as fh:
        fh.write("LJ001-0003|No audio.|No audio for this row.\n")
    return root / "wavs" / "LJ001-0003.wav"


def _ljspeech_empty_text(root: Path) -> Path:
    make_ljspeech(root)
    tone(root / "wavs" / "LJ001-0003.wav", sr=22050)
    with open(root / "metadata.csv", "a", encoding="utf-8") as fh:
        fh.write("LJ001-0003|Raw only.|\n")
    return root / "wavs" / "LJ001-0003.wav"


def _custom_meta_missing_wav(root: Path) -> Path:
    make_custom_meta3(root)
    with open(root / "metadata.csv", "a", encoding="utf-8") as fh:
        fh.write("gone.wav|carol|Nobody recorded this.\n")
    return root / "gone.wav"


def _tts_adapt_missing_wav(root: Path) -> Path:
    make_tts_adapt(root)
    gone = root / "wav" / "spk02" / "spk02_006.wav"
    gone.unlink()
    return gone


def _vctk_missing_txt(root: Path) -> Path:
    make_vctk(root)
    (root / "txt" / "p226" / "p226_001.txt").unlink()
    return root / "wav48_silence_trimmed" / "p226" / "p226_001_mic1.flac"


def _vctk_empty_txt(root: Path) -> Path:
    make_vctk(root)
    write(root / "txt" / "p226" / "p226_001.txt", "")  # 0 bytes: coqui's formatter raises IndexError here
    return root / "wav48_silence_trimmed" / "p226" / "p226_001_mic1.flac"


def _vctk_old_missing_txt(root: Path) -> Path:
    make_vctk_old(root)
    return tone(root / "wav48" / "p225" / "p225_003.wav", sr=48000)


def _libritts_missing_normalized(root: Path) -> Path:
    make_libritts(root)
    d = root / "train-clean-100" / "84" / "121550"
    write(d / "84_121550_000009_000000.original.txt", "Only the original text.")
    return tone(d / "84_121550_000009_000000.wav", sr=24000)


BAD_CASES = [
    BadCase("corrupt-audio", _custom_with("bad", audio=lambda p: write(p, np.random.default_rng(1).bytes(4096))),
            "unreadable audio", "unreadable audio"),
    BadCase("empty-file", _custom_with("bad", audio=lambda p: write(p, b"")), "empty audio", "empty (0 bytes)"),
    BadCase("silent-audio", _custom_with("bad", audio=lambda p: tone(p, silent=True)), "silent", "audio is silent"),
    BadCase("too-short", _custom_with("bad", audio=lambda p: tone(p, seconds=0.1)), "too short", "too short"),
    BadCase("missing-audio-ljspeech", _ljspeech_missing_wav, "missing audio", "audio file not found"),
    BadCase("missing-audio-custom-metadata", _custom_meta_missing_wav, "missing audio", "audio file not found"),
    BadCase("missing-audio-tts_adapt", _tts_adapt_missing_wav, "missing audio", "audio file not found"),
    BadCase("missing-transcript-custom", _custom_with("bad", audio=tone, text=None),
            "missing transcript", "transcript file not found: "),
    BadCase("missing-transcript-vctk", _vctk_missing_txt, "missing transcript",
            "transcript file not found: "),
    BadCase("missing-transcript-vctk-old", _vctk_old_missing_txt, "missing transcript",
            "transcript file not found: "),
    BadCase("missing-normalized-libritts", _libritts_missing_normalized, "missing transcript",
            "84_121550_000009_000000.normalized.txt"),
    BadCase("empty-transcript-custom", _custom_with("bad", audio=tone, text="  \n"), "empty transcript",
            "transcript is empty"),
    BadCase("empty-transcript-vctk", _vctk_empty_txt, "empty transcript", "transcript is empty"),
    BadCase("empty-transcript-ljspeech", _ljspeech_empty_text, "empty transcript", "transcript is empty"),
    BadCase("outside-alphabet", _custom_with("bad", audio=tone, text="héllo ✓"), "characters outside alphabet",
            "'é' '✓'"),
    BadCase("truncated-wav", _custom_with("bad", audio=truncated), "truncated audio",
            "truncated: its header says 2.80 s (44800 frames) but the file holds 1.40 s"),
    BadCase("sample-rate-below-the-model", _custom_with("bad", audio=lambda p: tone(p, sr=8000)),
            "sample rate too low", "recorded at 8000 Hz, far below the model's 16000 Hz"),
    BadCase("nothing-speakable-punctuation", _custom_with("bad", audio=tone, text="!!! ..."), "nothing speakable",
            "transcript '!!! ...' has nothing to speak"),
    BadCase("wrong-sample-rate", _custom_with("bad", audio=lambda p: tone(p, sr=22050)), "wrong sample rate",
            "sample rate is 22050 Hz, expected 16000 Hz", AudioChecks(expected_sample_rate=16000)),
    BadCase("wrong-channel-count", _custom_with("bad", audio=lambda p: tone(p, channels=2)), "wrong channel count",
            "has 2 channels, expected 1", AudioChecks(expected_channels=1)),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.id for c in BAD_CASES])
def test_bad_input_is_skipped_and_summarised(tmp_path, case):
    root = tmp_path / "ds"
    bad = case.build(root)

    utts, report = read_dataset(root, checks=case.checks)

    assert len(report.skipped) == 1, report.summary()
    item = report.skipped[0]
    assert (item.path, item.category) == (str(bad), case.category)
    assert case.reason in item.reason
    assert utts and str(bad) not in {u.audio_path for u in utts}
    summary = report.summary()
    assert f"skipped 1 file(s): 1 {case.category}" in summary
    assert f"{bad}: {item.reason}" in summary


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.id for c in BAD_CASES])
def test_bad_input_stops_under_error_policy(tmp_path, case):
    root = tmp_path / "ds"
    bad = case.build(root)
    with pytest.raises(BadInputError) as err:
        read_dataset(root, checks=case.checks, on_bad_input="error")
    assert str(bad) in str(err.value) and case.reason in str(err.value)
    assert "on_bad_input=skip" in str(err.value)


@pytest.mark.parametrize("text,ok", [
    ("\u4f60\u597d\u4e16\u754c", False), ("\U0001f600\U0001f600", False), ("!!! ... --", False), ("\u2014", False),
    ("\u041f\u0440\u0438\u0432\u0435\u0442", False), ("Hello.", True), ("h\u00e9llo", True), ("42", True),
    ("\u4f60\u597d OK", True),
])
def test_text_with_nothing_speakable_is_refused_whatever_the_alphabet(text, ok):
    report = InputReport("skip")
    assert speakable(text) is ok
    assert check_text(Utterance("/clips/a.wav", text, "target"), report, alphabet=None) is ok
    if not ok:
        assert report.skipped[0].category == "nothing speakable"
        assert report.skipped[0].reason == f"transcript {text!r} has nothing to speak: no Latin letters or digits, " \
                                           "only other scripts, emoji or punctuation"


def test_a_truncated_wav_is_refused_by_every_reader_of_audio(tmp_path):
    path = truncated(tmp_path / "cut.wav")
    assert sf.info(str(path)).frames == 22389  # libsndfile quietly reports what is left
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000)
    assert str(err.value) == (f"{path}: truncated: its header says 2.80 s (44800 frames) but the file holds "
                              "1.40 s (22389 frames)")
    # a whole file, a FLAC and a WAV whose header a streaming writer left open are read as before
    assert load_audio(tone(tmp_path / "whole.wav", seconds=2.8), 16000)[0].shape == (44800,)
    assert load_audio(tone(tmp_path / "whole.flac", seconds=2.8), 16000)[0].shape == (44800,)
    streamed = tmp_path / "streamed.wav"
    data = bytearray((tmp_path / "whole.wav").read_bytes())
    data[40:44] = b"\xff\xff\xff\xff"
    streamed.write_bytes(bytes(data))
    assert wav_header_frames(streamed) is None and load_audio(streamed, 16000)[0].shape == (44800,)


def test_invalid_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="on_bad_input must be one of skip, error"):
        read_dataset(make_custom_folder(tmp_path / "ds"), on_bad_input="ignore")


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("sr,channels,notes", [
    (22050, 1, {"resampled 22050 Hz to 16000 Hz"}),
    (16000, 2, {"down-mixed 2 channels to mono"}),
    (48000, 2, {"resampled 48000 Hz to 16000 Hz", "down-mixed 2 channels to mono"}),
])
def test_rate_and_channels_are_converted_and_noted_without_expectations(tmp_path, sr, channels, notes):
    root = make_custom_folder(tmp_path / "ds")
    odd = tone(root / "odd.wav", sr=sr, channels=channels)
    write(root / "odd.txt", "Recorded differently.")

    utts, report = read_dataset(root)

    assert report.ok and len(utts) == 3
    assert {(n.path, n.reason) for n in report.notes} == {(str(odd), r) for r in notes}
    assert "converted" in report.summary()
    assert next(u for u in utts if u.utt_id == "odd").duration == pytest.approx(SECONDS, abs=1e-3)


def test_load_audio_returns_16k_mono_from_48k_stereo(tmp_path):
    path = tone(tmp_path / "stereo.wav", sr=48000, channels=2, seconds=1.0)
    wav, notes = load_audio(path, 16000)
    assert wav.shape == (16000,) and wav.dtype == np.float32
    assert set(notes) == {"down-mixed 2 channels to mono", "resampled 48000 Hz to 16000 Hz"}
    # channels carry 0.5x and 1.0x of the tone: the mono mix peaks near 0.75 * 0.3
    assert 0.2 < float(np.max(np.abs(wav))) < 0.26

    # mono=False keeps the channels (only resampled)
    both, notes = load_audio(path, 16000, mono=False)
    assert both.shape == (2, 16000) and notes == ["resampled 48000 Hz to 16000 Hz"]
    assert np.allclose(both.mean(axis=0), wav, atol=1e-6)


# --------------------------------------------------------------------------- layout errors


VCTK_EXPECTED = ("expected VCTK layout: wav48_silence_trimmed/<speaker>/<speaker>_<nnn>_mic1.flac and "
                 "txt/<speaker>/<speaker>_<nnn>.txt")


def test_missing_root_names_expected_layouts(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetLayoutError) as err:
        read_dataset(root)
    msg = str(err.value)
    assert f"dataset folder {root} does not exist" in msg
    assert "vctk: VCTK layout: wav48_silence_trimmed/<speaker>/<speaker>_<nnn>_mic1.flac" in msg
    assert "ljspeech: LJSpeech layout: metadata.csv" in msg
    assert isinstance(err.value, ValueError)

    with pytest.raises(DatasetLayoutError, match="does not exist") as err:
        read_dataset(root, layout="vctk")
    assert VCTK_EXPECTED in str(err.value)


def test_unrecognised_folder_lists_what_it_found(tmp_path):
    root = tmp_path / "junk"
    write(root / "notes.md", "# my recordings\n")
    (root / "images").mkdir()
    for i in range(11):
        write(root / f"z{i:02d}.mp4", b"\0")
    with pytest.raises(DatasetLayoutError) as err:
        detect_layout(root)
    msg = str(err.value)
    assert f"cannot recognise the dataset layout of {root}" in msg
    assert "custom: custom layout: <name>.wav files" in msg
    assert f"found in {root}: images/, notes.md, z00.mp4" in msg
    assert "... and 3 more" in msg


@pytest.mark.parametrize("layout,build,expected,found", [
    ("vctk", make_ljspeech, VCTK_EXPECTED, "metadata.csv, wavs/"),
    ("ljspeech", make_vctk, "expected LJSpeech layout: metadata.csv with rows <id>|<raw text>|<normalized text>",
     "txt/, wav48_silence_trimmed/"),
    ("libritts", make_custom_folder, "expected LibriTTS layout: <speaker>/<chapter>/", "hello.txt, hello.wav"),
    ("tts_adapt", make_vctk, "expected tts_adapt corpus layout: manifest.csv with columns", "speaker-info.txt"),
    ("custom", make_libritts, "expected custom layout: <name>.wav files", "dev-clean/, train-clean-100/"),
])
def test_explicit_layout_that_does_not_match(tmp_path, layout, build, expected, found):
    root = build(tmp_path / "ds")
    with pytest.raises(DatasetLayoutError) as err:
        read_dataset(root, layout)
    msg = str(err.value)
    assert expected in msg and found in msg


def test_vctk_without_requested_mic(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"no audio files matching wav48_silence_trimmed/<speaker>/\*_mic3"):
        read_dataset(make_vctk(tmp_path / "ds"), mic="mic3")


def test_ljspeech_short_row_names_the_line(tmp_path):
    root = make_ljspeech(tmp_path / "ds")
    with open(root / "metadata.csv", "a", encoding="utf-8") as fh:
        fh.write("LJ001-0003|only two columns\n")
    with pytest.raises(DatasetLayoutError, match=r"metadata.csv line 3 has 2 column\(s\)"):
        read_dataset(root)


def test_clips_that_keep_most_of_the_models_band_are_upsampled_and_far_lower_ones_refused():
    from tts_adapt.data.validation import low_sample_rate

    assert low_sample_rate(16000, 22050) is None and low_sample_rate(24000, 22050) is None  # VCTK, LibriTTS
    assert low_sample_rate(12000, 16000) is None
    assert "far below the model's 16000 Hz" in low_sample_rate(8000, 16000)
    assert "at least 15435 Hz is needed" in low_sample_rate(11025, 22050)
