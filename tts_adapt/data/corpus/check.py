"""Are the corpus speakers distinct? A real-vs-real speaker-similarity check.

Each speaker's training utterances are split into two disjoint halves; one
embedding per half and speaker gives a similarity matrix whose diagonal is
"same speaker, other recordings". A usable multi-speaker corpus has every
speaker closer to itself than to anyone else.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tts_adapt.data.corpus.manifest import read_manifest
from tts_adapt.data.speaker_encoder import SpeakerEncoder, cosine_matrix


@dataclass
class SpeakerCheck:
    speakers: list[str]
    similarity: np.ndarray  # (n, n): row = first half of speaker i, column = second half of speaker j

    @property
    def own(self) -> np.ndarray:
        return np.diag(self.similarity)

    @property
    def best_other(self) -> np.ndarray:
        s = self.similarity.copy()
        np.fill_diagonal(s, -np.inf)
        return s.max(axis=1)

    @property
    def closest_to_self(self) -> int:
        return int((self.similarity.argmax(axis=1) == np.arange(len(self.speakers))).sum())

    def confusions(self) -> list[tuple[str, str, float, float]]:
        """(speaker, closest other speaker, own similarity, other similarity) where other >= own."""
        s = self.similarity.copy()
        np.fill_diagonal(s, -np.inf)
        return [(self.speakers[i], self.speakers[int(s[i].argmax())], float(self.own[i]), float(self.best_other[i]))
                for i in range(len(self.speakers)) if self.best_other[i] >= self.own[i]]

    def __str__(self) -> str:
        n = len(self.speakers)
        lines = [f"{self.closest_to_self}/{n} speakers closest to themselves; "
                 f"mean same-speaker similarity {self.own.mean():.3f}, "
                 f"mean best other-speaker similarity {self.best_other.mean():.3f}"]
        lines += [f"  {a} is closer to {b} ({o:.3f}) than to itself ({s:.3f})" for a, b, s, o in self.confusions()]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self.speakers)
        fig, ax = plt.subplots(figsize=(max(6, n * 0.16), max(5, n * 0.15)))
        im = ax.imshow(self.similarity, cmap="viridis")
        ax.set_xticks(range(n), self.speakers, rotation=90, fontsize=6)
        ax.set_yticks(range(n), self.speakers, fontsize=6)
        ax.set_xlabel("speaker (second half of recordings)")
        ax.set_ylabel("speaker (first half)")
        ax.set_title(f"speaker similarity, real vs real: {self.closest_to_self}/{n} closest to themselves")
        fig.colorbar(im, ax=ax, label="cosine")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def check_speakers(corpus_dir: str | Path, utterances_per_half: int = 3, *, progress: bool = True) -> SpeakerCheck:
    """Embed two disjoint halves of each speaker's training utterances and compare them."""
    corpus_dir = Path(corpus_dir)
    rows = read_manifest(corpus_dir)
    by_speaker: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["split"] == "train":
            by_speaker[r["speaker"]].append(str(corpus_dir / r["audio"]))
    speakers = sorted(s for s, a in by_speaker.items() if len(a) >= 2)
    k = utterances_per_half
    encoder = SpeakerEncoder()
    first, second = [], []
    for s in tqdm(speakers, desc="embedding speakers", unit="spk", disable=not progress):
        files = by_speaker[s]
        half = min(k, len(files) // 2)
        first.append(encoder.embed_speaker(files[:half]))
        second.append(encoder.embed_speaker(files[half:2 * half]))
    return SpeakerCheck(speakers, cosine_matrix(np.stack(first), np.stack(second)))
