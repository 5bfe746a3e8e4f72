"""Speaker identification: is a clip closest to its own voice among every voice of an evaluation?

Speaker cosine saturates: a clip can move a long way towards a voice while its cosine with that voice
barely changes. Identification asks a sharper question: rank every voice of the evaluation (the target,
the old and unseen speakers, and the corpus's other speakers) by the cosine between the clip's
embedding and each voice's *voice print*, the normalised mean resemblyzer embedding of clips of that
voice that are not evaluated (a speaker's training clips; the target's adaptation clips), and report

* ``id_top1``: 1 when the clip's own voice ranks first, else 0;
* ``id_rank``: the rank of its own voice (1 = best).

Scored on the real held-out recordings of the same sentences, the two measures give the ceiling of
the identification on this set of voices (voices that are close in the corpus stay confusable).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tts_adapt.data.speaker_encoder import cosine_matrix
from tts_adapt.io import atomic_path

#: Clips per voice print: enough for a stable embedding, few enough that 64 voices take seconds.
PRINT_CLIPS = 4


class VoicePrints:
    """Voice prints ``(voices, 256)`` of named voices, and the identification of clips against them."""

    def __init__(self, names: Sequence[str], prints: np.ndarray):
        if len(names) != len(prints) or len(set(names)) != len(names):
            raise ValueError(f"{len(names)} voice names (unique: {len(set(names))}) for {len(prints)} voice prints")
        if len(names) < 2:
            raise ValueError("identification needs at least two voices to choose from")
        self.names = list(names)
        self.prints = np.asarray(prints, dtype=np.float32)
        self._index = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_clips(cls, clips: Mapping[str, Sequence[str | Path]], encoder, *, cache_dir: str | Path | None = None,
                   per_voice: int = PRINT_CLIPS) -> "VoicePrints":
        """Voice prints of ``clips`` (voice name → audio files; the first ``per_voice`` of each are used),
        by ``encoder`` (:class:`~tts_adapt.data.speaker_encoder.SpeakerEncoder`). With ``cache_dir`` the prints
        are kept in ``<cache_dir>/evaluations/`` under a key of the files' paths, sizes and times."""
        chosen = {n: [str(p) for p in ps[:per_voice]] for n, ps in sorted(clips.items()) if ps}
        path = None
        if cache_dir is not None:
            h = hashlib.sha256()
            for name, paths in chosen.items():
                stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
                h.update(json.dumps([name, stats]).encode())
            path = Path(cache_dir) / "evaluations" / f"voiceprints-{h.hexdigest()[:16]}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as f:
                    return cls([str(n) for n in f["names"]], f["prints"])
        names = list(chosen)
        prints = np.stack([encoder.embed_speaker(chosen[n]) for n in names])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, names=np.asarray(names), prints=prints)
        return cls(names, prints)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def identify(self, embedding: np.ndarray, speaker: str) -> dict:
        """``{"id_rank": r, "id_top1": 0|1, "id_best": name}`` of a clip's ``embedding`` ``(256,)`` whose true
        voice is ``speaker``; ties count against the true voice (its rank is 1 + the voices scoring at least
        as high)."""
        if speaker not in self._index:
            raise KeyError(f"{speaker} has no voice print (voices: {', '.join(self.names[:8])}"
                           f"{' ...' if len(self.names) > 8 else ''})")
        sims = cosine_matrix(np.asarray(embedding, dtype=np.float32)[None], self.prints)[0]
        own = self._index[speaker]
        rank = 1 + int(np.sum(np.delete(sims, own) >= sims[own]))
        return {"id_rank": float(rank), "id_top1": float(rank == 1), "id_best": self.names[int(np.argmax(sims))]}
