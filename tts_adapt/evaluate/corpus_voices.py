"""How well a model speaks the voices of a corpus: MCD-DTW and speaker similarity per speaker.

For each evaluated speaker, the model synthesises the speaker's held-out
sentences — by name for speakers it was trained on, zero-shot from a d-vector of
the speaker's training clips otherwise — and the result is compared with the real
recordings of the same sentences:

* ``mcd``: mean MCD-DTW (dB) over the speaker's held-out utterances;
* ``same_similarity``: cosine between the embedding of the synthesised audio and
  that of the speaker's real held-out audio;
* ``best_other_similarity``: the highest cosine between the synthesised audio and
  the real audio of any other speaker of the corpus; the voice is recognisable
  when ``same_similarity`` exceeds it.

Two references are scored the same way, in place of synthesised audio:

* ``real recordings``: the speaker's recordings of other sentences (training
  clips), the ceiling of the measure on this corpus, whose voices are not all
  far apart;
* ``vocoded recordings``: the held-out recordings themselves, turned into the
  model's mel features and back by its vocoder (copy synthesis), the ceiling of
  any acoustic model with that vocoder.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tts_adapt.data.audio import load_audio
from tts_adapt.data.corpus.manifest import read_manifest
from tts_adapt.data.speaker_encoder import SpeakerEncoder, cosine_matrix
from tts_adapt.evaluate.metrics import mcd_dtw


@dataclass
class SpeakerScore:
    speaker: str
    speaker_set: str
    mode: str  # "trained" (by name), "zero-shot" (d-vector from reference clips) or one of REFERENCES
    utterances: int
    mcd: float
    same_similarity: float
    best_other_similarity: float
    closest_other: str

    @property
    def recognisable(self) -> bool:
        return self.same_similarity > self.best_other_similarity


def heldout_recordings(corpus: str | Path, speaker_set: str = "pretrain") -> dict[str, list[Path]]:
    """Held-out recordings of each speaker of ``speaker_set`` in the embedded corpus, in manifest order."""
    corpus = Path(corpus)
    heldout: dict[str, list[Path]] = defaultdict(list)
    for r in read_manifest(corpus):
        if r["speaker_set"] == speaker_set and r["split"] == "heldout":
            heldout[r["speaker"]].append(corpus / r["audio"])
    return heldout


def evaluate_voices(synth, corpus: str | Path, speaker_sets: tuple[str, ...] = ("pretrain", "unseen"),
                    per_speaker: int = 3, references: int = 5, max_speakers: int | None = None,
                    *, progress: bool = True, wav_dir: str | Path | None = None,
                    reference: bool = True) -> list[SpeakerScore]:
    """Score every speaker of ``speaker_sets`` in the embedded corpus ``corpus``.

    ``synth`` is a :class:`tts_adapt.models.synthesis.Synthesizer`. Synthesised
    audio is written to ``wav_dir`` when given. With ``reference``, the two references
    of the module's description are scored too.
    """
    corpus = Path(corpus)
    rows = read_manifest(corpus)
    sr = synth.sample_rate
    heldout: dict[str, list[dict]] = defaultdict(list)
    train: dict[str, list[str]] = defaultdict(list)
    sets: dict[str, str] = {}
    for r in rows:
        sets[r["speaker"]] = r["speaker_set"]
        if r["split"] == "heldout":
            heldout[r["speaker"]].append(r)
        else:
            train[r["speaker"]].append(str(corpus / r["audio"]))
    encoder = SpeakerEncoder()
    all_speakers = sorted(heldout)
    real_emb = {s: encoder.embed_speaker([str(corpus / r["audio"]) for r in heldout[s][:per_speaker]])
                for s in tqdm(all_speakers, desc="real speaker embeddings", unit="spk", disable=not progress)}
    known = set(synth.backend.speakers.names)
    chosen = [s for s in all_speakers if sets[s] in speaker_sets]
    if max_speakers:
        chosen = chosen[:max_speakers]
    names = list(real_emb)
    real_matrix = np.stack([real_emb[s] for s in names])

    def score(s: str, mode: str, emb: np.ndarray, utterances: int, mcd: float) -> SpeakerScore:
        sims = cosine_matrix(emb[None], real_matrix)[0]
        own = names.index(s)
        best_other, closest = max((sims[i], names[i]) for i in range(len(names)) if i != own)
        return SpeakerScore(s, sets[s], mode, utterances, mcd, float(sims[own]), float(best_other), closest)

    scores = []
    if reference:
        for s in tqdm(chosen, desc="real recordings (ceiling)", unit="spk", disable=not progress):
            clips = train[s][:per_speaker]
            scores.append(score(s, "real recordings", encoder.embed_speaker(clips), len(clips), float("nan")))
        if not synth.backend.produces_waveform:
            for s in tqdm(chosen, desc="vocoded recordings (ceiling)", unit="spk", disable=not progress):
                clips = [corpus / r["audio"] for r in heldout[s][:per_speaker]]
                wavs = [synth.copy_synthesis(c) for c in clips]
                mcd = np.mean([mcd_dtw(w, load_audio(c, sr)[0], sr).mcd for w, c in zip(wavs, clips)])
                scores.append(score(s, "vocoded recordings", encoder.embed_speaker(wavs, sample_rate=sr), len(wavs),
                                    float(mcd)))
    for s in tqdm(chosen, desc="synthesising and scoring", unit="spk", disable=not progress):
        if s in known:
            mode, kwargs = "trained", {"speaker": s}
        elif synth.backend.speakers.kind == "d_vector":
            mode, kwargs = "zero-shot", {"speaker_wavs": train[s][:references]}
        else:
            continue  # an ID-table model cannot speak an unseen voice
        wavs, mcds = [], []
        for r in heldout[s][:per_speaker]:
            wav = synth.speak(r["text"], **kwargs)
            real, _ = load_audio(corpus / r["audio"], sr)
            mcds.append(mcd_dtw(wav, real, sr).mcd)
            wavs.append(wav)
            if wav_dir is not None:
                from tts_adapt.data.audio import save_audio

                save_audio(Path(wav_dir) / s / f"{r['utt_id']}.wav", wav, sr)
        scores.append(score(s, mode, encoder.embed_speaker(wavs, sample_rate=sr), len(wavs), float(np.mean(mcds))))
    return scores


#: Modes of the reference rows, and the suffix of their keys in :func:`summarise`.
REFERENCES = {"real recordings": " (real recordings)", "vocoded recordings": " (vocoded recordings)"}


def summarise(scores: list[SpeakerScore]) -> dict:
    """Per speaker set: speakers, mean MCD, mean same / best-other similarity, share recognisable.

    The model's rows are keyed by speaker set (``"pretrain"``), the references by speaker set and the
    suffix of their mode in :data:`REFERENCES` (``"pretrain (real recordings)"``)."""
    out = {}
    order = ["trained", "zero-shot", *REFERENCES]
    for group_set, mode in sorted({(s.speaker_set, s.mode) for s in scores},
                                  key=lambda g: (g[0], order.index(g[1]) if g[1] in order else 0)):
        group = group_set + REFERENCES.get(mode, "")
        g = [s for s in scores if s.speaker_set == group_set and s.mode == mode]
        mcds = [s.mcd for s in g if np.isfinite(s.mcd)]
        out[group] = {
            "speakers": len(g),
            "mode": g[0].mode,
            "mcd_db": round(float(np.mean(mcds)), 3) if mcds else None,
            "same_similarity": round(float(np.mean([s.same_similarity for s in g])), 4),
            "best_other_similarity": round(float(np.mean([s.best_other_similarity for s in g])), 4),
            "recognisable": sum(s.recognisable for s in g),
            "recognisable_share": round(sum(s.recognisable for s in g) / len(g), 4),
        }
    return out


def scores_to_rows(scores: list[SpeakerScore]) -> list[dict]:
    return [{**asdict(s), "recognisable": s.recognisable} for s in scores]
