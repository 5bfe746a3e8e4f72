"""The embedded default corpus: synthetic multi-speaker English speech built offline.

Public API (imported lazily so that reading the configuration stays cheap):
:class:`CorpusConfig` (with :class:`CorpusText`), :func:`build_corpus`,
:class:`CorpusSummary`, :func:`generate_prompts` (template text),
:func:`diverse_prompts` and :func:`diphone_coverage` (diverse text),
:class:`SpeakerSpec`, :func:`design_speakers`, :func:`check_speakers`.
"""

from tts_adapt.registry import lazy_exports

_EXPORTS = {
    "CorpusConfig": "corpus_config", "CorpusText": "corpus_config", "SPEAKER_SETS": "corpus_config",
    "build_corpus": "build", "CorpusSummary": "build",
    "generate_prompts": "prompts",
    "diverse_prompts": "text", "diphone_coverage": "text",
    "SpeakerSpec": "voices", "design_speakers": "voices",
    "check_speakers": "check", "SpeakerCheck": "check",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
