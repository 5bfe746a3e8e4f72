"""Model stage: acoustic-model backends over coqui-tts, speaker conditioning, vocoders, pretraining.

Backends register by name (:data:`BACKENDS`); :meth:`TTSBackend.from_pretrained`
loads any model folder the toolkit wrote.
"""

from tts_adapt.models.base import BACKENDS, Batch, ModelFolderError, TTSBackend, get_backend, register_backend
from tts_adapt.models.fastpitch import FastPitchBackend
from tts_adapt.models.glowtts import GlowTTSBackend

__all__ = ["BACKENDS", "Batch", "ModelFolderError", "TTSBackend", "get_backend", "register_backend",
           "FastPitchBackend", "GlowTTSBackend"]
