"""The embedded corpus: prompts, speaker design, build, caching, splits and audio format."""

from __future__ import annotations

import csv
import re
import hashlib
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from tts_adapt.data.corpus import CorpusConfig, build_corpus, design_speakers, generate_prompts
from tts_adapt.data.corpus.prompts import bigram_coverage, candidate_sentences
from tts_adapt.data.corpus.voices import SynthesisError, check_synthesisers
from tts_adapt.data.readers import read_dataset

needs_synths = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("flite", "espeak-ng", "sox")),
    reason="flite, espeak-ng and sox are installed by scripts/setup.sh",
)

TINY = CorpusConfig(speakers=6, utterances=6, parallel=2, heldout=1, unseen_speakers=1, target_speakers=2,
                    prompts=40)


def _manifest(corpus: Path) -> list[dict]:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    build_corpus(out, TINY, workers=2, progress=False)
    return out


# ------------------------------------------------------------------ prompts and speakers
def test_prompts_are_many_distinct_and_deterministic():
    prompts = generate_prompts(600, seed=0)
    assert len(prompts) == 600 and len(set(prompts)) == 600
    assert prompts == generate_prompts(600, seed=0)
    assert prompts != generate_prompts(600, seed=1)
    for p in prompts:
        assert p[0].isupper() and p[-1] in ".?!", p
        assert not re.search(r"\b[Aa] [aeiou]", p), p  # "an" before vowels


def test_prompt_selection_covers_at_least_as_many_bigrams_as_the_first_candidates():
    pool = candidate_sentences(800, seed=3)
    chosen = generate_prompts(100, seed=3)
    assert bigram_coverage(chosen) >= bigram_coverage(pool[:100])


def test_speaker_design_is_deterministic_distinct_and_mixes_engines():
    specs = design_speakers(64, seed=0)
    assert specs == design_speakers(64, seed=0)
    assert len({s.name for s in specs}) == 64
    assert {s.voice for s in specs if s.engine == "flite"} == {"awb", "rms", "slt", "kal16"}
    espeak = [s for s in specs if s.engine == "espeak-ng"]
    assert len(espeak) >= 40
    assert len({s.voice for s in espeak}) == len(espeak)  # every accent x variant used once
    # settings are spread: no two speakers of the same base voice share near-identical settings
    for a in specs:
        for b in specs:
            if a is not b and a.voice == b.voice:
                assert abs(a.timbre - b.timbre) + abs(a.rate - b.rate) > 0.01


def test_missing_synthesiser_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda prog: None if prog == "flite" else "/usr/bin/" + prog)
    with pytest.raises(SynthesisError, match="flite"):
        check_synthesisers()


@pytest.mark.parametrize("bad, field", [
    (dict(speakers=2), "speakers"),
    (dict(speakers=5, unseen_speakers=2, target_speakers=3), "target_speakers"),
    (dict(utterances=3, parallel=2, heldout=1), "utterances"),
    (dict(sample_rate=12345), "sample_rate"),
])
def test_bad_corpus_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        CorpusConfig(**bad)


# ------------------------------------------------------------------ the built corpus
@needs_synths
def test_layout_and_manifest(tiny_corpus):
    rows = _manifest(tiny_corpus)
    assert len(rows) == TINY.speakers * TINY.utterances
    assert set(rows[0]) == {"utt_id", "speaker", "speaker_set", "split", "parallel", "duration", "audio", "text"}
    for r in rows:
        spk = r["speaker"]
        assert r["audio"] == f"wav/{spk}/{r['utt_id']}.wav"
        assert (tiny_corpus / r["audio"]).is_file()
        txt = tiny_corpus / "txt" / spk / f"{r['utt_id']}.txt"
        assert txt.read_text().strip() == r["text"]
        assert float(r["duration"]) > 0.5
    for name in ("speakers.json", "prompts.txt", "corpus.json"):
        assert (tiny_corpus / name).is_file()


@needs_synths
def test_splits(tiny_corpus):
    rows = _manifest(tiny_corpus)
    sets = defaultdict(set)
    for r in rows:
        sets[r["speaker_set"]].add(r["speaker"])
    assert len(sets["target"]) == TINY.target_speakers
    assert len(sets["unseen"]) == TINY.unseen_speakers
    assert len(sets["pretrain"]) == TINY.speakers - TINY.target_speakers - TINY.unseen_speakers
    assert any(s.startswith("fl") and "slt" in s for s in sets["target"])  # flite slt is a target
    assert any(s.startswith("es") for s in sets["target"])  # and an espeak-ng voice
    by_speaker = defaultdict(list)
    for r in rows:
        by_speaker[r["speaker"]].append(r)
    parallel_texts = None
    own_texts = []
    for spk, rs in by_speaker.items():
        assert sum(r["split"] == "heldout" for r in rs) == TINY.parallel + TINY.heldout
        par = [r["text"] for r in rs if r["parallel"] == "1"]
        assert all(r["split"] == "heldout" for r in rs if r["parallel"] == "1")
        parallel_texts = parallel_texts or par
        assert par == parallel_texts  # every speaker reads the same parallel sentences
        own_texts.append(frozenset(r["text"] for r in rs if r["parallel"] == "0"))
    assert len(set(own_texts)) == len(own_texts)  # each speaker reads a different subset


@needs_synths
def test_audio_is_mono_16k_trimmed_and_loudness_normalised(tiny_corpus):
    meter = pyloudnorm.Meter(16000)
    for r in _manifest(tiny_corpus)[:: TINY.utterances]:
        wav, sr = sf.read(tiny_corpus / r["audio"])
        assert sr == 16000 and wav.ndim == 1
        lead = np.argmax(np.abs(wav) > 0.01) / sr
        trail = (len(wav) - np.argmax(np.abs(wav[::-1]) > 0.01)) / sr
        assert lead < 0.25 and len(wav) / sr - trail < 0.35, r["audio"]
        assert abs(meter.integrated_loudness(wav) - TINY.loudness_lufs) < 3.0
        assert np.max(np.abs(wav)) < 0.9


@needs_synths
def test_rebuild_same_config_is_cached_and_other_config_refused(tiny_corpus):
    before = {p: p.stat().st_mtime_ns for p in tiny_corpus.rglob("*.wav")}
    summary = build_corpus(tiny_corpus, TINY, progress=False)
    assert summary.reused
    assert {p: p.stat().st_mtime_ns for p in tiny_corpus.rglob("*.wav")} == before
    with pytest.raises(FileExistsError, match="another configuration"):
        build_corpus(tiny_corpus, CorpusConfig(**{**TINY.to_dict(), "seed": 7}), progress=False)


@needs_synths
def test_deterministic_and_resumes_after_interruption(tiny_corpus, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_corpus, copy)
    (copy / "corpus.json").unlink()  # as if the build was killed before finishing
    victim = copy / _manifest(copy)[3]["audio"]
    victim.unlink()
    kept = {p: p.stat().st_mtime_ns for p in copy.rglob("*.wav")}
    summary = build_corpus(copy, TINY, workers=1, progress=False)
    assert not summary.reused and victim.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished files are not redone

    def digest(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.wav")}

    assert digest(copy) == digest(tiny_corpus)  # same seed, same audio
    assert _manifest(copy) == _manifest(tiny_corpus)


@needs_synths
def test_corpus_reads_back_through_the_reader(tiny_corpus):
    utts, report = read_dataset(tiny_corpus, "auto", workers=1)
    assert report.ok
    assert len(utts) == TINY.speakers * TINY.utterances
    assert {u.split for u in utts} >= {"pretrain/train", "pretrain/heldout", "target/train", "unseen/heldout"}


@needs_synths
@pytest.mark.slow
def test_default_speaker_design_gives_distinct_speakers(tmp_path):
    """Real-vs-real check: every (or nearly every) speaker is closest to itself."""
    from tts_adapt.data.corpus import check_speakers

    config = CorpusConfig(utterances=10, parallel=2, heldout=1)  # the default 64 speakers, fewer sentences
    build_corpus(tmp_path / "c", config, progress=False)
    result = check_speakers(tmp_path / "c", utterances_per_half=3, progress=False)
    assert len(result.speakers) == config.speakers
    assert result.closest_to_self >= 0.95 * config.speakers, str(result)
    assert result.own.mean() > result.best_other.mean()
    result.plot(tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000
