"""Measuring voices: speaker similarity from speaker-encoder embeddings."""

from tts_adapt.data.speaker_encoder import SpeakerEncoder, cosine_matrix

__all__ = ["SpeakerEncoder", "cosine_matrix"]
