"""Reading the embedded corpus's ``manifest.csv`` (one row per utterance; the columns are
:data:`tts_adapt.data.corpus.build.MANIFEST_FIELDS`, the audio path relative to the corpus folder)."""

from __future__ import annotations

import csv
from pathlib import Path

MANIFEST_FILE = "manifest.csv"


def read_manifest(corpus: str | Path) -> list[dict]:
    """The rows of ``corpus/manifest.csv`` as dicts of strings, in file order."""
    path = Path(corpus) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{corpus}: no {MANIFEST_FILE}; give a corpus built by tts-adapt corpus build")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def corpus_targets(corpus: str | Path) -> list[str]:
    """The speakers of the corpus's ``target`` set, the flite ``slt`` one first (:func:`choose_target`'s)."""
    targets = sorted({r["speaker"] for r in read_manifest(corpus) if r["speaker_set"] == "target"})
    if not targets:
        raise ValueError(f"{corpus}: no speaker of the 'target' set in {MANIFEST_FILE}; "
                         "name one with --target-speaker")
    return sorted(targets, key=lambda t: "slt" not in t)


def choose_target(corpus: str | Path) -> str:
    """The corpus's flite ``slt`` target speaker if there is one, else its first target speaker."""
    return corpus_targets(corpus)[0]
