"""Speaker embeddings (d-vectors) from resemblyzer's pretrained encoder.

resemblyzer ships its encoder weights inside the package, so nothing is
downloaded. Embeddings are L2-normalised 256-dimensional vectors; the cosine of
two embeddings is the speaker similarity used throughout the toolkit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EMBEDDING_DIM = 256


@functools.lru_cache(maxsize=1)
def _voice_encoder():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


class SpeakerEncoder:
    """Thin wrapper over ``resemblyzer.VoiceEncoder`` (loaded once per process)."""

    def _prepare(self, audio: str | Path | np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        from resemblyzer import preprocess_wav

        if isinstance(audio, (str, Path)):
            return preprocess_wav(Path(audio))
        if sample_rate is None:
            raise ValueError("sample_rate is required when audio is an array")
        return preprocess_wav(np.asarray(audio, dtype=np.float32), source_sr=sample_rate)

    def embed_utterance(self, audio: str | Path | np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Embedding ``(256,)`` of one recording (a path, or a waveform with its rate)."""
        wav = self._prepare(audio, sample_rate)
        if len(wav) < 1600:  # resemblyzer needs at least one 100 ms window of speech
            raise ValueError(f"{audio if isinstance(audio, (str, Path)) else 'audio'}: too little speech "
                             "for a speaker embedding (under 0.1 s after trimming silence)")
        return _voice_encoder().embed_utterance(wav)

    def embed_speaker(self, audios: Sequence[str | Path | np.ndarray], sample_rate: int | None = None) -> np.ndarray:
        """One embedding ``(256,)`` for several recordings of the same speaker (normalised mean)."""
        if not audios:
            raise ValueError("embed_speaker needs at least one recording")
        embs = np.stack([self.embed_utterance(a, sample_rate) for a in audios])
        mean = embs.mean(axis=0)
        return mean / np.linalg.norm(mean)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities ``(n, m)`` between rows of ``a`` ``(n, d)`` and ``b`` ``(m, d)``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T
