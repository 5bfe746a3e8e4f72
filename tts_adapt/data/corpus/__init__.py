"""The embedded default corpus: synthetic multi-speaker English speech built offline.

Public API (imported lazily so that reading the configuration stays cheap):
:class:`CorpusConfig`, :func:`build_corpus`, :class:`CorpusSummary`,
:func:`generate_prompts`, :class:`SpeakerSpec`, :func:`design_speakers`,
:func:`check_speakers`.
"""

import importlib

_EXPORTS = {
    "CorpusConfig": "config", "SPEAKER_SETS": "config",
    "build_corpus": "build", "CorpusSummary": "build",
    "generate_prompts": "prompts",
    "SpeakerSpec": "voices", "design_speakers": "voices",
    "check_speakers": "check", "SpeakerCheck": "check",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
