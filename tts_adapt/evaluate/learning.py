"""What an adapter learned and what it cost: the base model and the adapted model on the same utterances.

Three sets of held-out utterances, each spoken by both models and compared with
the real recordings of the same sentences:

* ``target``: the adapted voice's held-out clips; the adapted model speaks them as
  ``target``, the base model zero-shot from the same d-vector (the reference point);
* ``pretrain``: old speakers the base model was trained on, by name (forgetting);
* ``unseen``: voices neither model was trained on, zero-shot from reference clips
  (forgetting of the zero-shot skill; d-vector models only).

Every measure of :mod:`tts_adapt.evaluate.measures` is scored per utterance; each is reported for
both models, for the real recordings where it applies to them (the recogniser's floor, the ceilings
of naturalness and identification), and as the change (adapted - base), each figure with its 95 %
bootstrap interval over utterances (the change's over the paired utterances). The utterances are scored
by :mod:`tts_adapt.evaluate.scoring`; this module chooses them and sets the scores side by side.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from tts_adapt.data.samples import Utterance
from tts_adapt.data.target_split import split_speaker
from tts_adapt.evaluate.measures import MEASURES, paired_bootstrap, summarise_rows
from tts_adapt.evaluate.scoring import EvalUtterance
from tts_adapt.models.speakers import SpeakerTable

log = logging.getLogger(__name__)
SETS = ("target", "pretrain", "unseen")
#: The measures of an adapter's report, in the order they are shown.
REPORT_MEASURES = ("mcd_db", "f0_cents", "gpe", "vde", "wer", "cer", "dnsmos", "similarity", "id_top1", "id_rank",
                   "mel_loss")
DEFINITIONS = {**{k: MEASURES[k].definition for k in REPORT_MEASURES},
               "interval": "95 % percentile bootstrap over utterances (1000 resamples); the change's interval "
                           "resamples the same utterances for both models; a change whose interval contains 0 is "
                           "inside the noise"}


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


def summary_rows(base: dict | None, adapted: dict, recordings: list[dict] | None = None) -> list[dict]:
    """One row per (set, measure) with a figure: ``base``, ``adapted`` and ``real`` (the real recordings, for the
    measures that apply to one clip) each with its interval (``*_ci``), and ``change`` (adapted - base over the
    paired utterances) with ``change_ci``. ``base`` is None for a set the base model was not scored on."""
    rows = []
    key = lambda r: (r["set"], r["speaker"], r["utt_id"])  # noqa: E731
    b_by = {key(r): r for r in base["utterances"]} if base else {}
    real_by = {key(r): r for r in recordings or []}
    for group in SETS:
        a_utts = [r for r in adapted["utterances"] if r["set"] == group]
        if not a_utts:
            continue
        paired = bool(b_by) and all(key(r) in b_by for r in a_utts)
        b_utts = [b_by[key(r)] for r in a_utts] if paired else []
        real_utts = [real_by[key(r)] for r in a_utts if key(r) in real_by]
        for metric in REPORT_MEASURES:
            adapted_value, adapted_ci = summarise_rows(a_utts, metric)
            if adapted_value is None:
                continue  # not scored (e.g. no recogniser, no feature cache)
            row = {"set": group, "metric": metric, "n": len(a_utts), "adapted": adapted_value,
                   "adapted_ci": adapted_ci, "base": None, "base_ci": [None, None], "change": None,
                   "change_ci": [None, None], "real": None, "real_ci": [None, None]}
            if paired:
                row["base"], row["base_ci"] = summarise_rows(b_utts, metric)
                row["change"], row["change_ci"] = paired_bootstrap(a_utts, b_utts, metric)
            if MEASURES[metric].real and real_utts:
                row["real"], row["real_ci"] = summarise_rows(real_utts, metric)
            rows.append(row)
    return rows
