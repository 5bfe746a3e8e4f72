"""The target speaker's clips: reading, checking, and splitting off held-out clips.

The clips an adaptation run trains on, as the user brings them (a folder of wav + txt); the dataset side,
choosing a speaker's adaptation and held-out clips from a corpus, is :mod:`tts_adapt.data.target_split`.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from tts_adapt.adapt.adapt_config import MAX_CLIPS, MIN_CLIPS
from tts_adapt.data.readers import read_dataset
from tts_adapt.data.samples import InputReport, Utterance
from tts_adapt.data.validation import AudioChecks

log = logging.getLogger(__name__)


class TargetDataError(ValueError):
    pass


def read_target_clips(folder: str | Path, sample_rate: int, *, on_bad_input: str = "skip",
                      min_clips: int = MIN_CLIPS, max_clips: int = MAX_CLIPS,
                      speaker: str = "target") -> tuple[list[Utterance], InputReport]:
    """Usable clips of a target folder (``*.wav`` + same-named ``*.txt``, or ``metadata.csv``).

    Clips at another sample rate are resampled (noted in the report); too few usable
    clips is an error naming the folder and what was skipped.
    """
    folder = Path(folder)
    utts, report = read_dataset(folder, "custom", on_bad_input=on_bad_input,
                                checks=AudioChecks(sample_rate=sample_rate, min_duration=0.5, max_duration=20.0),
                                speaker=speaker)
    utts = [u.replace(speaker=speaker) for u in utts]
    if len(utts) < min_clips:
        raise TargetDataError(
            f"{folder}: {len(utts)} usable clip(s), at least {min_clips} are needed to adapt a voice"
            + (f"\n{report.summary()}" if report.skipped else ""))
    if len(utts) > max_clips:
        log.warning("%s: %d clips; using the first %d", folder, len(utts), max_clips)
        utts = utts[:max_clips]
    return utts, report


def split_heldout(utts: list[Utterance], fraction: float = 0.15, minimum: int = 2, seed: int = 0
                  ) -> tuple[list[Utterance], list[Utterance]]:
    """(training clips, held-out clips for validation), a seeded random split."""
    n_val = max(minimum, round(len(utts) * fraction))
    if n_val >= len(utts):
        raise TargetDataError(f"{len(utts)} clips are too few to hold out {n_val} for validation")
    idx = list(range(len(utts)))
    random.Random(seed).shuffle(idx)
    val = set(idx[:n_val])
    return [u for i, u in enumerate(utts) if i not in val], [u for i, u in enumerate(utts) if i in val]
