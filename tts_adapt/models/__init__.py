"""Model stage: acoustic-model backends over coqui-tts, speaker conditioning, vocoders, pretraining.

Backends register by name (:data:`BACKENDS`); :meth:`TTSBackend.from_pretrained`
loads any model folder the toolkit wrote, and coqui-tts zoo models by name or
downloaded folder (:mod:`tts_adapt.models.zoo`). Names are imported lazily, so that
reading a configuration (e.g. :mod:`tts_adapt.models.pretrain_config`) does not
import PyTorch and coqui-tts.
"""

from tts_adapt.registry import lazy_exports

_EXPORTS = {
    "BACKENDS": "base", "Batch": "base", "ModelFolderError": "base", "TTSBackend": "base",
    "register_backend": "base", "get_backend": "backends", "load_backend": "backends",
    "FastPitchBackend": "fastpitch", "GlowTTSBackend": "glowtts",
    "CoquiFastPitchBackend": "zoo_fastpitch", "VitsBackend": "vits", "YourTTSBackend": "vits",
    "SUPPORTED_MODELS": "zoo",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
