"""The one sample type every reader returns, and the record of bad input.

Readers never raise on a single bad file: they add a :class:`BadInput` to an
:class:`InputReport` and go on; what happens next (skip and summarise, or stop)
is chosen by :class:`OnBadInput`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utterance:
    """One recording with its transcript.

    ``duration`` is in seconds (``None`` until measured); ``split`` is the
    corpus split the utterance belongs to (``None`` for datasets without one).
    """

    audio_path: str
    text: str
    speaker: str
    duration: float | None = None
    split: str | None = None
    utt_id: str = ""

    def replace(self, **changes) -> "Utterance":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class OnBadInput(str, enum.Enum):
    """What to do with a file that cannot be used."""

    SKIP = "skip"  # report it, leave it out, summarise at the end
    ERROR = "error"  # stop at the first one with a clear message

    @classmethod
    def parse(cls, value: "str | OnBadInput") -> "OnBadInput":
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"on_bad_input must be one of {valid}; got {value!r}") from None


class BadInputError(ValueError):
    """Raised under ``OnBadInput.ERROR``; the message names the file and the reason."""


@dataclass(frozen=True)
class BadInput:
    path: str
    reason: str
    category: str  # short key used for the summary, e.g. "silent", "missing transcript"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class InputReport:
    """Collects skipped files and conversion notes for one reading pass."""

    on_bad_input: OnBadInput = OnBadInput.SKIP
    skipped: list[BadInput] = field(default_factory=list)
    notes: list[BadInput] = field(default_factory=list)

    def __post_init__(self):
        self.on_bad_input = OnBadInput.parse(self.on_bad_input)

    def bad(self, path, reason: str, category: str) -> None:
        """Record an unusable file; raise instead when the policy is ``error``."""
        item = BadInput(str(path), reason, category)
        if self.on_bad_input is OnBadInput.ERROR:
            raise BadInputError(
                f"{item}\n(stopped because on_bad_input=error; use on_bad_input=skip to leave such files out)"
            )
        log.warning("skipping %s", item)
        self.skipped.append(item)

    def note(self, path, reason: str, category: str) -> None:
        """Record a conversion that was made (the file is still used)."""
        self.notes.append(BadInput(str(path), reason, category))

    def merge(self, other: "InputReport") -> None:
        self.skipped.extend(other.skipped)
        self.notes.extend(other.notes)

    @property
    def ok(self) -> bool:
        return not self.skipped

    def summary(self, max_listed: int = 10) -> str:
        """A human-readable summary: counts per reason, then the first files."""
        if not self.skipped and not self.notes:
            return "all input files usable"
        lines = []
        if self.skipped:
            counts = Counter(b.category for b in self.skipped)
            lines.append(
                f"skipped {len(self.skipped)} file(s): " + ", ".join(f"{n} {c}" for c, n in counts.most_common())
            )
            lines += [f"  {b}" for b in self.skipped[:max_listed]]
            if len(self.skipped) > max_listed:
                lines.append(f"  ... and {len(self.skipped) - max_listed} more")
        if self.notes:
            counts = Counter(b.category for b in self.notes)
            lines.append(
                f"converted {len(self.notes)} file(s): " + ", ".join(f"{n} {c}" for c, n in counts.most_common())
            )
            lines += [f"  {b}" for b in self.notes[:max_listed]]
            if len(self.notes) > max_listed:
                lines.append(f"  ... and {len(self.notes) - max_listed} more")
        return "\n".join(lines)
