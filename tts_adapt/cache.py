"""Where the toolkit keeps what it computes once and reuses (features, base-model scores)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TTS_ADAPT_CACHE"


def cache_dir(given: str | Path | None = None) -> Path:
    """``given`` if set, else ``$TTS_ADAPT_CACHE``, else ``~/.cache/tts_adapt``."""
    if given:
        return Path(given)
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "tts_adapt"))
