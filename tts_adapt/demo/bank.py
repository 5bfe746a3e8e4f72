"""The demo's adapter bank: the bank folder of :mod:`tts_adapt.adapt.bank` (one sub-folder per adapter, as
``tts-adapt quickstart``, ``tts-adapt bank add`` and the demo's Clone tab write them), and the evaluation
reports the Compare tab shows.

A new adapter is trained in a hidden staging folder inside the bank and appears under its
name only when complete, by one atomic rename; hidden folders are never listed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tts_adapt.adapt.adapter import Adapter
from tts_adapt.adapt.bank import NAME_PATTERN, STAGING_PREFIX, AdapterBank

__all__ = [
    "EVAL_REPORT",
    "NAME_PATTERN",
    "STAGING_PREFIX",
    "AdapterBank",
    "EvaluationReportError",
    "read_evaluation",
]

EVAL_REPORT = Path("eval") / "report.json"


class EvaluationReportError(ValueError):
    pass


def read_evaluation(adapter: Adapter) -> dict | None:
    """``eval/report.json`` written by ``tts-adapt evaluate --adapter``, or ``None`` when the adapter has
    not been evaluated. The report's keys are kept; its ``rows`` are normalised: each has ``set``,
    ``metric``, ``n`` (int or None), the figures ``base``, ``adapted``, ``change``, ``real`` and
    ``change_se`` (floats, or None where there was nothing to score, NaN included) and the 95 % intervals
    ``base_ci``, ``adapted_ci``, ``change_ci``, ``real_ci`` (``[low, high]`` of floats or None, or None
    when the report has no such key: one written before the figures had intervals). ``definitions`` is
    a dict (empty when missing)."""
    path = adapter.path / EVAL_REPORT
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        rows = [_report_row(r) for r in report["rows"]]
        definitions = {str(k): str(v) for k, v in dict(report.get("definitions") or {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise EvaluationReportError(f"{path}: not a report of tts-adapt evaluate ({err})") from None
    return {**report, "rows": rows, "definitions": definitions}


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _report_row(row: dict) -> dict:
    out = {**row, "set": str(row["set"]), "metric": str(row["metric"]),
           "n": None if row.get("n") is None else int(row["n"])}
    out["adapted"] = _number(row["adapted"])
    for key in ("base", "change", "real", "change_se"):
        out[key] = _number(row.get(key))
    for key in ("base_ci", "adapted_ci", "change_ci", "real_ci"):
        if key not in row:  # a report from before the intervals
            out[key] = None
            continue
        interval = row[key] if row[key] is not None else [None, None]
        if len(interval) != 2:
            raise ValueError(f"{key} of {out['set']}/{out['metric']} is not [low, high]: {interval!r}")
        out[key] = [_number(v) for v in interval]
    return out

