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

from tts_adapt.data.corpus.manifest import read_manifest
from tts_adapt.data.speaker_encoder import SpeakerEncoder
from tts_adapt.evaluate.scoring import EvalUtterance, RealAudio, score_model, score_recordings


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
    of the module's description are scored too. Scoring is :func:`tts_adapt.evaluate.scoring.score_model`'s,
    without pitch, each speaker's similarity taken against the held-out recordings of every speaker.
    """
    corpus = Path(corpus)
    rows = read_manifest(corpus)
    heldout: dict[str, list[dict]] = defaultdict(list)
    train: dict[str, list[str]] = defaultdict(list)
    sets: dict[str, str] = {}
    for r in rows:
        sets[r["speaker"]] = r["speaker_set"]
        if r["split"] == "heldout":
            heldout[r["speaker"]].append(r)
        else:
            train[r["speaker"]].append(str(corpus / r["audio"]))
    encoder, real = SpeakerEncoder(), RealAudio(synth.sample_rate)
    all_speakers = sorted(heldout)
    rivals = {s: [str(corpus / r["audio"]) for r in heldout[s][:per_speaker]] for s in all_speakers}
    known = set(synth.backend.speakers.names)
    chosen = [s for s in all_speakers if sets[s] in speaker_sets]
    if max_speakers:
        chosen = chosen[:max_speakers]

    def items(s: str, refs: list[str]) -> list[EvalUtterance]:
        return [EvalUtterance(sets[s], s, r["utt_id"], r["text"], str(corpus / r["audio"]), refs)
                for r in heldout[s][:per_speaker]]

    def scored(got: dict, modes: dict[str, str]) -> list[SpeakerScore]:
        out = []
        for label, same in got["similarity"].items():
            group, s = label.split("/", 1)
            mcds = [u["mcd_db"] for u in got["utterances"] if u["set"] == group and u["speaker"] == s]
            out.append(SpeakerScore(s, group, modes[s], len(mcds), float(np.mean(mcds)), same,
                                    got["best_other_similarity"][label], got["closest_other"][label]))
        return out

    scores = []
    if reference:
        for s in chosen:
            clips = train[s][:per_speaker]
            same, best_other, closest = score_recordings(clips, s, real, encoder, rivals)
            scores.append(SpeakerScore(s, sets[s], "real recordings", len(clips), float("nan"), same, best_other,
                                       closest))
        if not synth.backend.produces_waveform:
            copies = [it for s in chosen for it in items(s, [])]
            scores += scored(score_model(synth, copies, real, encoder, name="vocoded recordings, ceiling",
                                         pitch=False, source="copy synthesis", rivals=rivals, progress=progress),
                             dict.fromkeys(chosen, "vocoded recordings"))
    spoken, modes = [], {}
    for s in chosen:
        if s in known:
            modes[s], refs = "trained", []
        elif synth.backend.speakers.kind == "d_vector":
            modes[s], refs = "zero-shot", train[s][:references]
        else:
            continue  # an ID-table model cannot speak an unseen voice
        spoken += items(s, refs)
    got = score_model(synth, spoken, real, encoder, name="model", pitch=False, rivals=rivals,
                      wav_dir=Path(wav_dir) if wav_dir is not None else None, progress=progress)
    return scores + scored(got, modes)


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
