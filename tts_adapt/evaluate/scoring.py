"""Scoring synthesised speech against real recordings: the one engine of every evaluation.

An evaluation is a list of :class:`EvalUtterance` (a sentence, its real recording, and how the
voice is spoken: by name, or zero-shot from reference clips). :func:`score_model` speaks each
one with a model (or, for copy synthesis, puts its recording through the model's vocoder) and
compares it with the real recording:

* per utterance: MCD-DTW, and with ``pitch`` F0 RMSE and voicing error on the same DTW path;
* per speaker: the cosine between the embedding of the synthesised utterances and that of the
  speaker's real ones, and, given ``rivals``, the highest cosine with any other speaker's;
* per set, given a feature cache: the model's teacher-forced loss on the real recordings.

Real recordings are analysed and embedded once per process (:class:`RealAudio`); the scores of a
base model, which depend only on its weights, the utterances and the target voice, are cached on
disk (:func:`cached_scores`). The adapter evaluation (:mod:`tts_adapt.evaluate.learning`) and the
corpus-voice evaluation of the model card (:mod:`tts_adapt.evaluate.corpus_voices`) both score here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tts_adapt.data.audio import load_audio, save_audio
from tts_adapt.data.samples import Utterance
from tts_adapt.data.speaker_encoder import cosine_matrix
from tts_adapt.evaluate.metrics import Analysis, analyse, compare
from tts_adapt.io import write_json_atomic
from tts_adapt.models.synthesis import reference_d_vector

log = logging.getLogger(__name__)
EVAL_VERSION = 1  # bump when a measure changes: cached base-model scores are then recomputed
#: Where the waveform of an utterance comes from: the model speaking its text, or its recording
#: through the model's features and vocoder.
SOURCES = ("model", "copy synthesis")


@dataclass
class EvalUtterance:
    set: str
    speaker: str
    utt_id: str
    text: str
    audio: str  # real recording
    references: list[str] = field(default_factory=list)  # zero-shot reference clips (unseen voices)


class RealAudio:
    """Analyses and embeddings of real recordings, computed once per process."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._analysis: dict[tuple[str, bool], Analysis] = {}
        self._embedding: dict[tuple, np.ndarray] = {}

    def analysis(self, path: str, pitch: bool = True) -> Analysis:
        key = (str(path), pitch)
        if key not in self._analysis:
            wav, _ = load_audio(path, self.sample_rate)
            self._analysis[key] = analyse(wav, self.sample_rate, pitch=pitch)
        return self._analysis[key]

    def embedding(self, encoder, paths: list[str]) -> np.ndarray:
        key = tuple(str(p) for p in paths)
        if key not in self._embedding:
            self._embedding[key] = encoder.embed_speaker(list(key))
        return self._embedding[key]


def _mel_losses(backend, items: list[EvalUtterance], cache_dir: Path) -> dict[str, float]:
    """Teacher-forced loss per set, on the real recordings (speaker ``target`` for the target set)."""
    out = {}
    for group in ("target", "pretrain"):
        utts = [Utterance(i.audio, i.text, i.speaker, utt_id=i.utt_id) for i in items if i.set == group]
        if not utts:
            continue
        feats = backend.extract_features(utts, cache_dir, progress=False)  # the model's own features (VITS: + wav)
        for f, u in zip(feats, utts):
            f.speaker = u.speaker
        was = backend.model.training
        backend.model.eval()
        total, key = 0.0, None
        with torch.no_grad():
            for k in range(0, len(feats), 8):
                chunk = feats[k:k + 8]
                _, parts = backend.loss(backend.collate(chunk))
                key = "loss_spec" if "loss_spec" in parts else "loss"
                total += parts[key] * len(chunk)
        backend.model.train(was)
        out[group] = total / max(1, len(feats))
    return out


def similarities(emb: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Cosines ``(m,)`` of one speaker embedding ``(d,)`` with real speakers' embeddings ``(m, d)``."""
    return cosine_matrix(emb[None], real)[0]


def speak_as(synth, text: str, speaker: str, references, voices: dict) -> "np.ndarray":
    """``text`` in ``speaker``'s voice: by name, or zero-shot from the d-vector of its ``references`` (reference
    clips), which the model's encoder computes once per speaker into ``voices``."""
    if not references:
        return synth.speak(text, speaker=speaker)
    key = tuple(references)
    if key not in voices:
        voices[key] = reference_d_vector(references, synth.sample_rate, synth.backend)
    return synth.speak(text, d_vector=voices[key])


def score_model(synth, items: list[EvalUtterance], real: RealAudio, encoder, *, name: str,
                cache_dir: Path | None = None, wav_dir: Path | None = None, pitch: bool = True,
                source: str = "model", rivals: dict[str, list[str]] | None = None, progress: bool = True) -> dict:
    """Per-utterance measures, per-speaker similarity and (with ``cache_dir``, the feature cache) per-set
    mel loss of one model (a :class:`~tts_adapt.models.synthesis.Synthesizer`) on ``items``.

    ``source`` is one of :data:`SOURCES`. Without ``pitch`` only MCD-DTW is measured per utterance.
    ``rivals`` maps every speaker of a corpus to real clips of theirs: a speaker's similarity is then
    taken against all of them at once, and the closest other speaker is reported too. The result
    (JSON-ready) has ``utterances`` (rows), ``similarity`` (by ``"<set>/<speaker>"``) and ``mel_loss``
    (by set), and with ``rivals`` ``best_other_similarity`` and ``closest_other``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    sr = synth.sample_rate
    rows, wavs_by_speaker = [], defaultdict(list)
    voices: dict[tuple, torch.Tensor] = {}  # zero-shot voices: one embedding per speaker, by the model's encoder
    for it in tqdm(items, desc=f"synthesising and scoring ({name})", unit="utt", disable=not progress):
        if source == "copy synthesis":
            wav = synth.copy_synthesis(it.audio)
        else:
            wav = speak_as(synth, it.text, it.speaker, it.references, voices)
        m = compare(analyse(wav, sr, pitch=pitch), real.analysis(it.audio, pitch=pitch))
        rows.append({"set": it.set, "speaker": it.speaker, "utt_id": it.utt_id, **m})
        wavs_by_speaker[(it.set, it.speaker)].append(wav)
        if wav_dir is not None:
            save_audio(wav_dir / it.speaker / f"{it.utt_id}.wav", wav, sr)
    real_paths = defaultdict(list)
    for it in items:
        real_paths[(it.set, it.speaker)].append(it.audio)
    names = list(rivals or ())
    rival_matrix = np.stack([real.embedding(encoder, rivals[n]) for n in names]) if rivals else None
    similarity, best_other, closest = {}, {}, {}
    for key, wavs in wavs_by_speaker.items():
        label = "/".join(key)
        try:
            syn = encoder.embed_speaker(wavs, sample_rate=sr)
        except ValueError as err:  # the model spoke (nearly) silence: no similarity, the other measures stand
            log.warning("%s: no speaker similarity for %s (%s)", name, label, err)
            similarity[label] = best_other[label] = float("nan")
            closest[label] = None
            continue
        if rival_matrix is None:
            similarity[label] = float(similarities(syn, real.embedding(encoder, real_paths[key])[None])[0])
            continue
        similarity[label], best_other[label], closest[label] = _against_rivals(syn, key[1], names, rival_matrix)
    scores = {"utterances": rows, "similarity": similarity,
              "mel_loss": _mel_losses(synth.backend, items, cache_dir) if cache_dir is not None else {}}
    if rivals:
        scores.update(best_other_similarity=best_other, closest_other=closest)
    return scores


def _against_rivals(emb: np.ndarray, speaker: str, names: list[str], matrix: np.ndarray) -> tuple[float, float, str]:
    """(similarity to ``speaker``'s real audio, the highest to any other speaker's, that speaker)."""
    sims = similarities(emb, matrix)
    own = names.index(speaker)
    best, other = max((sims[i], names[i]) for i in range(len(names)) if i != own)
    return float(sims[own]), float(best), other


def score_recordings(paths: list[str], speaker: str, real: RealAudio, encoder,
                     rivals: dict[str, list[str]]) -> tuple[float, float, str]:
    """Real recordings scored in place of synthesised audio: (similarity to ``speaker``, best other, closest
    other), against the same ``rivals`` as :func:`score_model`."""
    names = list(rivals)
    matrix = np.stack([real.embedding(encoder, rivals[n]) for n in names])
    return _against_rivals(real.embedding(encoder, paths), speaker, names, matrix)


def base_cache_key(backend, items: list[EvalUtterance], d_vector: torch.Tensor | None) -> str:
    """Identifies the base model's scores: model weights, utterances, target voice, measure version."""
    h = hashlib.sha256()
    h.update(backend.fingerprint().encode())
    h.update(json.dumps([asdict(i) for i in items], sort_keys=True).encode())
    if d_vector is not None:
        h.update(np.asarray(d_vector.detach().cpu(), dtype=np.float32).tobytes())
    h.update(f"v{EVAL_VERSION}".encode())
    return h.hexdigest()[:16]


def cached_scores(synth, items: list[EvalUtterance], real: RealAudio, encoder, *, cache_dir: Path,
                  d_vector: torch.Tensor | None, name: str, **kwargs) -> dict:
    """:func:`score_model` of a model whose scores depend only on its weights, ``items`` and the target's
    ``d_vector`` (a base model): read from ``<cache_dir>/evaluations/`` when scored before, else scored
    and kept there."""
    path = Path(cache_dir) / "evaluations" / f"base-{base_cache_key(synth.backend, items, d_vector)}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    scores = score_model(synth, items, real, encoder, name=name, cache_dir=cache_dir, **kwargs)
    write_json_atomic(path, scores)
    return scores
