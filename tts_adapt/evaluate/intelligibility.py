"""Intelligibility: word and character error rates of an offline speech recogniser against the text.

The recogniser is PocketSphinx (the ``pocketsphinx`` wheel's US-English acoustic model, its
language model ``en-us.lm.bin`` and the CMU pronouncing dictionary, all shipped in the wheel, so
it runs offline). It decodes 16 kHz mono 16-bit audio; audio at another rate is resampled first.
Each sentence is decoded on its own (:meth:`Recogniser.transcribe` is one utterance, with
cepstral mean normalisation over the whole clip), so a result never depends on what came before.

References and hypotheses are normalised the same way (:func:`normalise_text`) before they are
compared:

1. the text cleaner of the shipped model, coqui-tts's ``english_cleaners``: lower case, times,
   numbers, currency and ordinals spelt out as words and common abbreviations expanded, i.e. the
   words the synthesiser is given to read ("Dr. Smith paid $3" → "doctor smith paid three dollars");
2. hyphens, dashes and slashes become spaces ("well-known" → "well known", as the recogniser's
   dictionary writes it);
3. every other character but the letters a–z, the apostrophe and spaces is removed (punctuation,
   quotes); apostrophes are kept inside a word ("don't") and dropped at its edges;
4. runs of spaces collapse to one.

:func:`error_rates` scores a list of sentences with ``jiwer``: per-utterance rows and corpus-level
rates (all errors over all reference words, or characters, as ``jiwer`` computes them over the
list), each with a percentile bootstrap interval over utterances.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import jiwer
import numpy as np

from tts_adapt.data.audio import load_audio, resample

#: The rate of the recogniser's acoustic model, Hz.
RECOGNISER_RATE = 16000
#: Resamples of the bootstrap interval, and its default coverage.
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95

_SEPARATORS = re.compile(r"[-\u2010-\u2015/]+")
_NOT_WORD = re.compile(r"[^a-z' ]+")
_EDGE_APOSTROPHES = re.compile(r"(?<![a-z])'+|'+(?![a-z])")
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _english_cleaners():
    # importing coqui-tts's text package takes seconds: only when a text is first normalised
    from TTS.tts.utils.text.cleaners import english_cleaners

    return english_cleaners


def normalise_text(text: str) -> str:
    """``text`` as the words a listener should hear: see the module docstring for the four steps.

    ``"Well-known, isn't it? 2 Dr.s"`` → ``"well known isn't it two doctors"``.
    """
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    text = _english_cleaners()(text).lower()
    text = _SEPARATORS.sub(" ", text)
    text = _NOT_WORD.sub("", text)
    text = _EDGE_APOSTROPHES.sub("", text)
    return _SPACES.sub(" ", text).strip()


class Recogniser:
    """PocketSphinx with the wheel's US-English models (or the ``hmm``, ``lm`` and ``dict`` files given).

    One decoder, reused: each call of :meth:`transcribe` is a separate utterance.
    """

    sample_rate = RECOGNISER_RATE

    def __init__(self, hmm: str | Path | None = None, lm: str | Path | None = None,
                 dictionary: str | Path | None = None):
        from pocketsphinx import Decoder

        paths = {k: str(v) for k, v in (("hmm", hmm), ("lm", lm), ("dict", dictionary)) if v is not None}
        self._decoder = Decoder(samprate=RECOGNISER_RATE, loglevel="FATAL", **paths)

    def transcribe(self, wav: np.ndarray, sample_rate: int) -> str:
        """The recogniser's words for one utterance ``wav`` ``(num_samples,)`` (float in [-1, 1], or
        ``(channels, num_samples)``, mixed down) at ``sample_rate``, lower case; ``""`` if it hears none."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 2:
            wav = wav.mean(axis=0)
        if wav.ndim != 1:
            raise ValueError(f"expected audio of shape (num_samples,) or (channels, num_samples), got {wav.shape}")
        if not np.isfinite(wav).all():
            raise ValueError("audio contains NaN or infinite samples")
        wav = resample(wav, sample_rate, RECOGNISER_RATE)
        pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)  # whole clip: cepstral mean over the utterance itself
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def transcribe_file(self, path: str | Path) -> str:
        """:meth:`transcribe` of an audio file (read and resampled by :func:`tts_adapt.data.audio.load_audio`)."""
        return self.transcribe(load_audio(path, RECOGNISER_RATE)[0], RECOGNISER_RATE)


def utterance_errors(reference: str, hypothesis: str) -> dict:
    """Edit counts of one sentence after :func:`normalise_text`: ``words`` and ``word_errors``
    (substitutions + deletions + insertions), ``chars`` and ``char_errors``, and their ratios
    ``wer``, ``cer``. The normalised texts are returned as ``reference`` and ``hypothesis``."""
    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        raise ValueError(f"reference {reference!r} has no words to recognise")
    w = jiwer.process_words(ref, hyp)
    c = jiwer.process_characters(ref, hyp)
    words, chars = w.hits + w.substitutions + w.deletions, c.hits + c.substitutions + c.deletions
    word_errors = w.substitutions + w.deletions + w.insertions
    char_errors = c.substitutions + c.deletions + c.insertions
    return {"reference": ref, "hypothesis": hyp, "words": words, "word_errors": word_errors,
            "wer": word_errors / words, "chars": chars, "char_errors": char_errors, "cer": char_errors / chars}


def bootstrap_interval(errors: Sequence[float], totals: Sequence[float], *, confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the ratio ``sum(errors) / sum(totals)`` over utterances (each
    resample draws as many utterances as there are, with replacement). Deterministic for a ``seed``."""
    errors, totals = np.asarray(errors, dtype=np.float64), np.asarray(totals, dtype=np.float64)
    if errors.shape != totals.shape or errors.ndim != 1 or len(errors) == 0:
        raise ValueError(f"errors and totals must be two equally long non-empty lists, got {errors.shape} "
                         f"and {totals.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    picks = np.random.default_rng(seed).integers(0, len(errors), size=(resamples, len(errors)))
    ratios = errors[picks].sum(axis=1) / totals[picks].sum(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def error_rates(references: Sequence[str], hypotheses: Sequence[str], *, confidence: float = CONFIDENCE,
                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Word and character error rates of ``hypotheses`` against ``references`` (one sentence each).

    Returns (JSON-ready) ``utterances`` (the rows of :func:`utterance_errors`, in order), corpus-level
    ``wer`` and ``cer`` (``jiwer`` over all utterances: all errors over all reference words or
    characters), their intervals ``wer_interval`` and ``cer_interval`` (``[low, high]``, see
    :func:`bootstrap_interval`), ``confidence`` and the counts ``utterances_count``, ``words``, ``chars``.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    rows = [utterance_errors(r, h) for r, h in zip(references, hypotheses)]
    refs, hyps = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
    word_errors, words = [r["word_errors"] for r in rows], [r["words"] for r in rows]
    char_errors, chars = [r["char_errors"] for r in rows], [r["chars"] for r in rows]
    interval = {"confidence": confidence, "resamples": resamples, "seed": seed}
    return {"utterances": rows,
            "wer": float(jiwer.wer(refs, hyps)),
            "wer_interval": list(bootstrap_interval(word_errors, words, **interval)),
            "cer": float(jiwer.cer(refs, hyps)),
            "cer_interval": list(bootstrap_interval(char_errors, chars, **interval)),
            "confidence": confidence, "utterances_count": len(rows), "words": int(sum(words)),
            "chars": int(sum(chars))}


def transcribe_and_score(recogniser: Recogniser, wavs: Sequence[np.ndarray], sample_rate: int,
                         texts: Sequence[str], **kwargs) -> dict:
    """:func:`error_rates` of ``recogniser``'s transcripts of ``wavs`` (all at ``sample_rate``) against
    ``texts``; each row also has the raw ``transcript``. ``kwargs`` go to :func:`error_rates`."""
    transcripts = [recogniser.transcribe(w, sample_rate) for w in wavs]
    scores = error_rates(texts, transcripts, **kwargs)
    for row, t in zip(scores["utterances"], transcripts):
        row["transcript"] = t
    return scores
