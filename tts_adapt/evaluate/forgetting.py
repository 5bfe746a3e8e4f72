"""Learning against forgetting: the base model and its adapters on the same held-out sentences.

Learning: the adapted voice (speaker ``target``) on the target speaker's held-out
clips — speaker similarity to the real clips and MCD-DTW. The base model speaks
the same sentences zero-shot from the target's d-vector, as the reference point.
Forgetting: every model speaks held-out sentences of old (pretraining) speakers
by name; the change of their MCD-DTW from the base model's is the forgetting.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tts_adapt.data.audio import load_audio, save_audio
from tts_adapt.evaluate.metrics import mcd_dtw
from tts_adapt.evaluate.speaker import SpeakerEncoder, cosine_matrix


@dataclass
class ModelScores:
    name: str
    target_similarity: float
    target_mcd: float
    old_mcd: float  # mean over old speakers' held-out utterances
    old_mcd_by_speaker: dict


def _heldout(corpus: Path) -> dict[str, list[dict]]:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["split"] == "heldout":
            out[r["speaker"]].append(r)
    return out


def compare_models(synths: dict, corpus: str | Path, target_speaker: str, target_references: list[str],
                   old_speakers: list[str], per_speaker: int = 2, target_utterances: int = 4,
                   wav_dir: str | Path | None = None, progress: bool = True) -> list[ModelScores]:
    """Score each ``Synthesizer`` in ``synths`` (name -> synthesizer). A synthesizer whose speakers
    include ``target`` speaks the target voice by name; others speak it zero-shot from
    ``target_references``."""
    corpus = Path(corpus)
    heldout = _heldout(corpus)
    encoder = SpeakerEncoder()
    target_rows = heldout[target_speaker][:target_utterances]
    real_target = encoder.embed_speaker([str(corpus / r["audio"]) for r in target_rows])
    results = []
    for name, synth in synths.items():
        sr = synth.sample_rate
        adapted = "target" in synth.backend.speakers.names
        voice = {"speaker": "target"} if adapted else {"speaker_wavs": target_references}
        wavs, mcds = [], []
        jobs = [(target_speaker, r, voice) for r in target_rows]
        jobs += [(s, r, {"speaker": s}) for s in old_speakers for r in heldout[s][:per_speaker]]
        old: dict[str, list[float]] = defaultdict(list)
        for speaker, r, kwargs in tqdm(jobs, desc=f"scoring {name}", unit="utt", disable=not progress):
            wav = synth.speak(r["text"], **kwargs)
            real, _ = load_audio(corpus / r["audio"], sr)
            mcd = mcd_dtw(wav, real, sr).mcd
            if speaker == target_speaker:
                wavs.append(wav)
                mcds.append(mcd)
            else:
                old[speaker].append(mcd)
            if wav_dir is not None:
                save_audio(Path(wav_dir) / name / speaker / f"{r['utt_id']}.wav", wav, sr)
        sim = float(cosine_matrix(encoder.embed_speaker(wavs, sample_rate=sr)[None], real_target[None])[0, 0])
        by_speaker = {s: float(np.mean(v)) for s, v in old.items()}
        results.append(ModelScores(name, sim, float(np.mean(mcds)),
                                   float(np.mean(list(by_speaker.values()))) if by_speaker else float("nan"),
                                   by_speaker))
    return results


def table(scores: list[ModelScores], base: str = "base", seconds: dict | None = None) -> str:
    """A plain-text table: target similarity and MCD, old-speaker MCD and its change from ``base``."""
    ref = next((s for s in scores if s.name == base), None)
    head = f"{'model':<16} {'target sim':>10} {'target MCD':>10} {'old MCD':>8} {'old dMCD':>9}"
    if seconds:
        head += f" {'time (s)':>9}"
    lines = [head, "-" * len(head)]
    for s in scores:
        delta = s.old_mcd - ref.old_mcd if ref is not None else float("nan")
        line = f"{s.name:<16} {s.target_similarity:>10.3f} {s.target_mcd:>10.2f} {s.old_mcd:>8.2f} {delta:>+9.2f}"
        if seconds:  # the base model is not trained here: no time to show
            line += f" {seconds[s.name]:>9.0f}" if s.name in seconds else f" {'-':>9}"
        lines.append(line)
    return "\n".join(lines)
