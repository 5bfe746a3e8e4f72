"""What an adapter learned and what it cost: the base model and the adapted model on the same utterances.

Three sets of held-out utterances, each spoken by both models and compared with
the real recordings of the same sentences:

* ``target``: the adapted voice's held-out clips; the adapted model speaks them as
  ``target``, the base model zero-shot from the same d-vector (the reference point);
* ``pretrain``: old speakers the base model was trained on, by name (forgetting);
* ``unseen``: voices neither model was trained on, zero-shot from reference clips
  (forgetting of the zero-shot skill; d-vector models only).

Per utterance: MCD-DTW, F0 RMSE, voicing error; per speaker: speaker similarity;
per set: the teacher-forced mel loss. Each is reported for both models and as the
change (adapted - base) with the standard error of the paired per-utterance
(or per-speaker) differences. The utterances are scored by :mod:`tts_adapt.evaluate.scoring`; this
module chooses them and sets the two models' scores side by side.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from tts_adapt.data.samples import Utterance
from tts_adapt.data.target_split import split_speaker
from tts_adapt.evaluate.scoring import EvalUtterance
from tts_adapt.models.speakers import SpeakerTable

log = logging.getLogger(__name__)
SETS = ("target", "pretrain", "unseen")
UTTERANCE_METRICS = ("mcd_db", "f0_rmse_hz", "voicing_error")
LOWER_IS_BETTER = {"mcd_db": True, "f0_rmse_hz": True, "voicing_error": True, "similarity": False,
                   "mel_loss": True}

DEFINITIONS = {
    "mcd_db": "mel-cepstral distortion (dB): order-24 mel-cepstra (pysptk mcep, all-pass constant from "
              "pysptk.util.mcepalpha), c0 excluded, leading/trailing silence trimmed, frames aligned by DTW "
              "(librosa); 10/ln10 * sqrt(2 * sum_d (c_d - c'_d)^2) averaged over the path; mean over utterances",
    "f0_rmse_hz": "RMSE of F0 (Hz, librosa pYIN 50-600 Hz) over frames voiced in both, on the same DTW path",
    "voicing_error": "fraction of DTW-aligned frames whose voiced/unvoiced decisions differ (pYIN)",
    "similarity": "cosine of resemblyzer speaker embeddings: the speaker's synthesised utterances vs the "
                  "same speaker's real held-out recordings (one embedding each, averaged over utterances)",
    "mel_loss": "teacher-forced training loss of the acoustic model on the real held-out recordings "
                "(FastPitch: its L1 mel term in normalised log-mel units)",
    "change": "adapted - base on the same utterances; ± is the standard error of the paired differences "
              "(per utterance; per speaker for similarity)",
}


def _spread(names: list[str], count: int) -> list[str]:
    """``count`` names evenly spread over the sorted list (a deterministic mix of the corpus's voice families)."""
    names = sorted(names)
    if count >= len(names):
        return names
    return [names[int(i)] for i in np.linspace(0, len(names) - 1, count).round()]


def select_utterances(known: list[str], data_utts: list[Utterance] | None, target_heldout: list[Utterance], *,
                      target_speaker: str | None = None, old_speakers: int = 8, unseen_speakers: int = 6,
                      per_speaker: int = 2, references: int = 5, zero_shot: bool = True) -> list[EvalUtterance]:
    """The evaluation utterances: all of ``target_heldout``, and ``per_speaker`` held-out utterances of
    ``old_speakers`` speakers the model knows and of ``unseen_speakers`` it does not (from ``data_utts``).

    ``known`` are the model's speaker names; a dataset speaker is known when the model's speaker table
    matches it (:meth:`SpeakerTable.index`: the VCTK reader's ``p225`` is a zoo model's ``VCTK_p225``).
    The target speaker is never an old or unseen speaker.
    """
    items = [EvalUtterance("target", "target", u.utt_id or Path(u.audio_path).stem, u.text, u.audio_path)
             for u in target_heldout]
    if not data_utts:
        return items
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for u in data_utts:
        by_speaker[u.speaker].append(u)
    table = SpeakerTable("id_table", [n for n in known if n != "target"])
    # the embedded corpus's splits name the speaker set ("unseen/train"); LibriTTS's name a subset
    sets = {s: (v[0].split or "").split("/")[0] if "/" in (v[0].split or "") else "" for s, v in by_speaker.items()}
    old = [s for s in by_speaker if s != target_speaker and table.knows(s)]
    new = [s for s in by_speaker if s != target_speaker and not table.knows(s)]
    if not old:
        shown = ", ".join(sorted(by_speaker)[:6]) + (" ..." if len(by_speaker) > 6 else "")
        model = ", ".join(table.names[:6]) + (" ..." if len(table.names) > 6 else "")
        log.warning("none of the dataset's %d speakers (%s) is a speaker of the model (%s): forgetting of old "
                    "speakers is not measured; give --data a dataset of the model's pretraining speakers",
                    len(by_speaker), shown, model or "no named speakers")
    if any(sets.values()):  # the embedded corpus names its unseen speakers
        new = [s for s in new if sets[s] == "unseen"]
    chosen = [("pretrain", s) for s in _spread(old, old_speakers)]
    if zero_shot:
        chosen += [("unseen", s) for s in _spread(new, unseen_speakers)]
    for group, s in chosen:
        try:  # zero-shot reference clips come from the speaker's utterances that are not held out
            train, held = split_speaker(by_speaker[s], s, references if group == "unseen" else 0, per_speaker)
        except ValueError:
            continue  # a speaker with too few utterances is left out
        refs = [u.audio_path for u in train] if group == "unseen" else []
        if group == "unseen" and not refs:
            continue
        items += [EvalUtterance(group, s, u.utt_id or Path(u.audio_path).stem, u.text, u.audio_path, refs)
                  for u in held]
    return items


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def summary_rows(base: dict | None, adapted: dict) -> list[dict]:
    """One row per (set, metric): base and adapted means, change (adapted - base) and its standard error."""
    rows = []
    for group in SETS:
        a_utts = [r for r in adapted["utterances"] if r["set"] == group]
        if not a_utts:
            continue
        b_by = {(r["set"], r["speaker"], r["utt_id"]): r for r in base["utterances"]} if base else {}
        paired = all((r["set"], r["speaker"], r["utt_id"]) in b_by for r in a_utts)
        for metric in UTTERANCE_METRICS:
            a = [r[metric] for r in a_utts]
            b = [b_by[(r["set"], r["speaker"], r["utt_id"])][metric] for r in a_utts] if paired else None
            rows.append(_row(group, metric, a, b, len(a_utts)))
        keys = [k for k in adapted["similarity"] if k.split("/")[0] == group]
        a = [adapted["similarity"][k] for k in keys]
        b = [base["similarity"][k] for k in keys] if paired else None
        rows.append(_row(group, "similarity", a, b, len(keys)))
        if group in adapted["mel_loss"]:
            b = [base["mel_loss"][group]] if base and group in base["mel_loss"] else None
            rows.append(_row(group, "mel_loss", [adapted["mel_loss"][group]], b, len(a_utts)))
    return rows


def _finite(value: float) -> float | None:
    """NaN (nothing to average, e.g. no frame voiced in both) is stored as JSON null."""
    return None if value is None or math.isnan(value) else value


def _row(group: str, metric: str, adapted: list[float], base: list[float] | None, n: int) -> dict:
    a_mean, _ = _mean_se(adapted)
    row = {"set": group, "metric": metric, "n": n, "base": None, "adapted": _finite(a_mean), "change": None,
           "change_se": None}
    if base is not None:
        b_mean, _ = _mean_se(base)
        diffs = [x - y for x, y in zip(adapted, base)
                 if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
        change, se = _mean_se(diffs)
        row.update(base=_finite(b_mean), change=_finite(change), change_se=_finite(se))
    return row
