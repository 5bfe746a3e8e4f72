"""Scoring synthesised speech against real recordings: the one engine of every evaluation.

An evaluation is a list of :class:`EvalUtterance` (a sentence, its real recording, and how the
voice is spoken: by name, or zero-shot from reference clips). :func:`score_model` speaks each
one with a model (or, for copy synthesis, puts its recording through the model's vocoder) and
scores it as a listener would (:mod:`tts_adapt.evaluate.measures` defines each measure):

* against the real recording of the same sentence: MCD-DTW, and with ``pitch`` the pitch error in
  cents, gross pitch errors and voicing decision errors on the same DTW path, the pitch tracker's
  range set per speaker from the speaker's real clips;
* by the machine listeners of :class:`Listeners`: speaker similarity with the speaker's real
  held-out recordings, and, when given, speaker identification among all voices (voice prints),
  word and character errors of a speech recogniser, and predicted naturalness (DNSMOS);
* with a feature cache: the model's teacher-forced loss on the real recording;
* per speaker (the model card's corpus voices): the cosine between the embedding of all of the
  speaker's synthesised utterances and its real ones, and, given ``rivals``, the highest cosine with
  any other speaker's.

:func:`score_recordings_as_clips` scores the real recordings themselves with the same listeners: the
floor (recogniser) or ceiling (naturalness, identification) that a model is read against.

Real recordings are analysed and embedded once per process (:class:`RealAudio`); the scores of a
base model, which depend only on its weights, the utterances and the target voice, and those of the
real recordings are cached on disk (:func:`cached_scores`). The adapter evaluation
(:mod:`tts_adapt.evaluate.learning`) and the corpus-voice evaluation of the model card
(:mod:`tts_adapt.evaluate.corpus_voices`) both score here.
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
from tts_adapt.data.speaker_encoder import SpeakerEncoder, cosine_matrix
from tts_adapt.evaluate.identification import VoicePrints
from tts_adapt.evaluate.intelligibility import Recogniser, utterance_errors
from tts_adapt.evaluate.metrics import Analysis, analyse, compare, speaker_f0_range
from tts_adapt.evaluate.naturalness import NaturalnessPredictor
from tts_adapt.io import write_json_atomic
from tts_adapt.models.synthesis import reference_d_vector

log = logging.getLogger(__name__)
EVAL_VERSION = 2  # bump when a measure changes: cached base-model and recording scores are then recomputed
#: Where the waveform of an utterance comes from: the model speaking its text, or its recording
#: through the model's features and vocoder.
SOURCES = ("model", "copy synthesis")
#: Counts of the recogniser's errors kept per utterance (word and character error rates are ratios of sums).
ERROR_COUNTS = ("word_errors", "words", "char_errors", "chars")


@dataclass
class EvalUtterance:
    set: str
    speaker: str
    utt_id: str
    text: str
    audio: str  # real recording
    references: list[str] = field(default_factory=list)  # zero-shot reference clips (unseen voices)


@dataclass
class Listeners:
    """The machine listeners that score a clip: a speaker encoder (always), and when given, voice prints for
    identification, a speech recogniser (intelligibility) and a naturalness predictor. Loaded once and
    shared by every model of an evaluation or a sweep."""

    encoder: SpeakerEncoder = field(default_factory=SpeakerEncoder)
    recogniser: Recogniser | None = None
    naturalness: NaturalnessPredictor | None = None
    prints: VoicePrints | None = None

    @classmethod
    def full(cls, encoder: SpeakerEncoder | None = None) -> "Listeners":
        """Every listener of the toolkit (voice prints are set per evaluation)."""
        return cls(encoder or SpeakerEncoder(), Recogniser(), NaturalnessPredictor())

    def describe(self) -> dict:
        return {"speaker_encoder": "resemblyzer", "recogniser": "pocketsphinx en-us" if self.recogniser else None,
                "naturalness": "DNSMOS P.835 (speechmos)" if self.naturalness else None,
                "voices": len(self.prints.names) if self.prints else 0}


class RealAudio:
    """Analyses and embeddings of real recordings, and each speaker's pitch range, computed once per process."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._analysis: dict[tuple, Analysis] = {}
        self._embedding: dict[tuple, np.ndarray] = {}
        self._f0_range: dict[tuple, tuple[float, float]] = {}

    def f0_range(self, paths: list[str]) -> tuple[float, float]:
        """The pitch tracker's range for a speaker whose real clips are ``paths``
        (:func:`tts_adapt.evaluate.metrics.speaker_f0_range`)."""
        key = tuple(sorted(str(p) for p in paths))
        if key not in self._f0_range:
            wavs = [load_audio(p, self.sample_rate)[0] for p in key]
            self._f0_range[key] = speaker_f0_range(wavs, self.sample_rate)
        return self._f0_range[key]

    def analysis(self, path: str, pitch: bool = True, f0_range: tuple[float, float] | None = None) -> Analysis:
        key = (str(path), pitch, f0_range)
        if key not in self._analysis:
            wav, _ = load_audio(path, self.sample_rate)
            self._analysis[key] = analyse(wav, self.sample_rate, pitch=pitch, f0_range=f0_range)
        return self._analysis[key]

    def embedding(self, encoder, paths: list[str]) -> np.ndarray:
        """One embedding of the recordings ``paths`` (the normalised mean of each one's, computed once)."""
        key = tuple(str(p) for p in paths)
        if key not in self._embedding:
            if len(key) == 1:
                self._embedding[key] = encoder.embed_utterance(key[0])
            else:
                mean = np.mean([self.embedding(encoder, [p]) for p in key], axis=0)
                self._embedding[key] = mean / np.linalg.norm(mean)
        return self._embedding[key]


def _mel_losses(backend, items: list[EvalUtterance], cache_dir: Path) -> dict[tuple, float]:
    """Teacher-forced loss of each utterance's real recording (speaker ``target`` for the target set), by
    ``(set, speaker, utt_id)``."""
    out = {}
    utts = [Utterance(i.audio, i.text, i.speaker, utt_id=i.utt_id) for i in items if i.set in ("target", "pretrain")]
    if not utts:
        return out
    keys = [(i.set, i.speaker, i.utt_id) for i in items if i.set in ("target", "pretrain")]
    feats = backend.extract_features(utts, cache_dir, progress=False)  # the model's own features (VITS: + wav)
    for f, u in zip(feats, utts):
        f.speaker = u.speaker
    was = backend.model.training
    backend.model.eval()
    with torch.no_grad():
        for key, f in zip(keys, feats):
            _, parts = backend.loss(backend.collate([f]).to(backend.device))
            out[key] = float(parts["loss_spec" if "loss_spec" in parts else "loss"])
    backend.model.train(was)
    return out


def _speaker_clips(items: list[EvalUtterance]) -> dict[tuple[str, str], list[str]]:
    """The real held-out recordings of each ``(set, speaker)`` of ``items``."""
    out = defaultdict(list)
    for it in items:
        out[(it.set, it.speaker)].append(it.audio)
    return out


def listen(wav: np.ndarray, sample_rate: int, it: EvalUtterance, listeners: Listeners,
           reference: np.ndarray | None) -> dict:
    """What the listeners make of one clip ``wav`` of utterance ``it``: ``similarity`` with the embedding
    ``reference`` of the speaker's real held-out recordings, and with the optional listeners ``id_rank``,
    ``id_top1``, the recogniser's ``transcript`` and error counts, and ``dnsmos``. A clip with too little
    speech for an embedding gets no similarity or identification (NaN), and the other measures stand."""
    out: dict = {}
    try:
        emb = listeners.encoder.embed_utterance(wav, sample_rate)
    except ValueError as err:  # the model spoke (nearly) silence
        log.warning("%s/%s: no speaker embedding (%s)", it.speaker, it.utt_id, err)
        emb = None
    out["similarity"] = float(cosine_matrix(emb[None], reference[None])[0, 0]) \
        if emb is not None and reference is not None else float("nan")
    if listeners.prints is not None and it.speaker in listeners.prints:
        out.update(listeners.prints.identify(emb, it.speaker) if emb is not None
                   else {"id_rank": float(len(listeners.prints.names)), "id_top1": 0.0, "id_best": None})
    if listeners.recogniser is not None:
        transcript = listeners.recogniser.transcribe(wav, sample_rate)
        errors = utterance_errors(it.text, transcript)
        out.update(transcript=transcript, **{k: errors[k] for k in ERROR_COUNTS})
    if listeners.naturalness is not None:
        out["dnsmos"] = listeners.naturalness.score(wav, sample_rate)["dnsmos"]
    return out


def score_recordings_as_clips(items: list[EvalUtterance], real: RealAudio, listeners: Listeners, *,
                              progress: bool = True) -> list[dict]:
    """The real recordings of ``items`` scored as if they were synthesised clips: one row per utterance with
    the listeners' measures (:func:`listen`); a clip's similarity is taken with the other held-out recordings
    of its speaker (NaN when it has none)."""
    clips = _speaker_clips(items)
    rows = []
    for it in tqdm(items, desc="scoring the real recordings", unit="utt", disable=not progress):
        others = [p for p in clips[(it.set, it.speaker)] if p != it.audio]
        reference = real.embedding(listeners.encoder, others) if others else None
        wav, _ = load_audio(it.audio, real.sample_rate)
        rows.append({"set": it.set, "speaker": it.speaker, "utt_id": it.utt_id,
                     **listen(wav, real.sample_rate, it, listeners, reference)})
    return rows


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


def score_model(synth, items: list[EvalUtterance], real: RealAudio, listeners: Listeners | SpeakerEncoder, *,
                name: str, cache_dir: Path | None = None, wav_dir: Path | None = None, pitch: bool = True,
                source: str = "model", rivals: dict[str, list[str]] | None = None, progress: bool = True) -> dict:
    """Per-utterance measures, per-speaker similarity and (with ``cache_dir``, the feature cache) per-utterance
    mel loss of one model (a :class:`~tts_adapt.models.synthesis.Synthesizer`) on ``items``.

    ``listeners`` (:class:`Listeners`, or a speaker encoder alone) decides which listeners' measures are
    taken; ``source`` is one of :data:`SOURCES`. Without ``pitch`` only MCD-DTW is measured against the
    recording. ``rivals`` maps every speaker of a corpus to real clips of theirs: a speaker's similarity is
    then taken against all of them at once, and the closest other speaker is reported too. The result
    (JSON-ready) has ``utterances`` (rows) and ``similarity`` (by ``"<set>/<speaker>"``), and with ``rivals``
    ``best_other_similarity`` and ``closest_other``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not isinstance(listeners, Listeners):
        listeners = Listeners(listeners)
    encoder = listeners.encoder
    sr = synth.sample_rate
    clips = _speaker_clips(items)
    rows, wavs_by_speaker = [], defaultdict(list)
    voices: dict[tuple, torch.Tensor] = {}  # zero-shot voices: one embedding per speaker, by the model's encoder
    for it in tqdm(items, desc=f"synthesising and scoring ({name})", unit="utt", disable=not progress):
        if source == "copy synthesis":
            wav = synth.copy_synthesis(it.audio)
        else:
            wav = speak_as(synth, it.text, it.speaker, it.references, voices)
        f0_range = real.f0_range(clips[(it.set, it.speaker)]) if pitch else None
        m = compare(analyse(wav, sr, pitch=pitch, f0_range=f0_range),
                    real.analysis(it.audio, pitch=pitch, f0_range=f0_range))
        heard = listen(wav, sr, it, listeners, real.embedding(encoder, clips[(it.set, it.speaker)])) \
            if rivals is None else {}
        rows.append({"set": it.set, "speaker": it.speaker, "utt_id": it.utt_id, **m, **heard})
        wavs_by_speaker[(it.set, it.speaker)].append(wav)
        if wav_dir is not None:
            save_audio(wav_dir / it.speaker / f"{it.utt_id}.wav", wav, sr)
    if cache_dir is not None:
        losses = _mel_losses(synth.backend, items, cache_dir)
        for r in rows:
            r["mel_loss"] = losses.get((r["set"], r["speaker"], r["utt_id"]))
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
            similarity[label] = float(similarities(syn, real.embedding(encoder, clips[key])[None])[0])
            continue
        similarity[label], best_other[label], closest[label] = _against_rivals(syn, key[1], names, rival_matrix)
    scores = {"utterances": rows, "similarity": similarity}
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


def base_cache_key(backend, items: list[EvalUtterance], d_vector: torch.Tensor | None,
                   listeners: Listeners | None = None) -> str:
    """Identifies the base model's scores: model weights, utterances, target voice, listeners, measure version."""
    h = hashlib.sha256()
    h.update(backend.fingerprint().encode())
    h.update(json.dumps([asdict(i) for i in items], sort_keys=True).encode())
    if listeners is not None:
        h.update(json.dumps(listeners.describe(), sort_keys=True).encode())
        if listeners.prints is not None:
            h.update(json.dumps(listeners.prints.names).encode())
            h.update(listeners.prints.prints.tobytes())
    if d_vector is not None:
        h.update(np.asarray(d_vector.detach().cpu(), dtype=np.float32).tobytes())
    h.update(f"v{EVAL_VERSION}".encode())
    return h.hexdigest()[:16]


def cached_scores(synth, items: list[EvalUtterance], real: RealAudio, listeners: Listeners, *, cache_dir: Path,
                  d_vector: torch.Tensor | None, name: str, **kwargs) -> dict:
    """:func:`score_model` of a model whose scores depend only on its weights, ``items``, the listeners and the
    target's ``d_vector`` (a base model): read from ``<cache_dir>/evaluations/`` when scored before, else
    scored and kept there."""
    key = base_cache_key(synth.backend, items, d_vector, listeners)
    path = Path(cache_dir) / "evaluations" / f"base-{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    scores = score_model(synth, items, real, listeners, name=name, cache_dir=cache_dir, **kwargs)
    write_json_atomic(path, scores)
    return scores


def cached_recordings(items: list[EvalUtterance], real: RealAudio, listeners: Listeners, *, cache_dir: Path,
                      progress: bool = True) -> list[dict]:
    """:func:`score_recordings_as_clips`, kept in ``<cache_dir>/evaluations/`` under a key of the utterances,
    the files' sizes and the listeners."""
    h = hashlib.sha256()
    h.update(json.dumps([[asdict(i), Path(i.audio).stat().st_size] for i in items], sort_keys=True).encode())
    h.update(json.dumps(listeners.describe(), sort_keys=True).encode())
    if listeners.prints is not None:
        h.update(listeners.prints.prints.tobytes())
    h.update(f"v{EVAL_VERSION}".encode())
    path = Path(cache_dir) / "evaluations" / f"recordings-{h.hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    rows = score_recordings_as_clips(items, real, listeners, progress=progress)
    write_json_atomic(path, rows)
    return rows
