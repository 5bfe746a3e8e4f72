"""The adapter bank: a folder of adapters (one sub-folder each), as ``tts-adapt quickstart`` and the
demo's Clone tab write them.

A new adapter is trained in a hidden staging folder inside the bank and appears under its
name only when complete, by one atomic rename; hidden folders are never listed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

from tts_adapt.adapt.adapter import ADAPTER_FILES, Adapter, is_adapter_folder

EVAL_REPORT = Path("eval") / "report.json"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]{0,47}")
STAGING_PREFIX = ".staging-"


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


class AdapterBank:
    """Adapters stored as sub-folders of ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def adapters(self) -> list[Adapter]:
        """Complete adapters, by name (staging and other hidden folders are skipped)."""
        if not self.root.is_dir():
            return []
        return [Adapter.load(folder) for folder in sorted(self.root.iterdir())
                if not folder.name.startswith(".") and is_adapter_folder(folder)]

    def names(self) -> list[str]:
        return [a.name for a in self.adapters()]

    def get(self, name: str) -> Adapter:
        for a in self.adapters():
            if a.name == name:
                return a
        raise KeyError(f"{name!r} is not an adapter of {self.root}; adapters: {', '.join(self.names()) or 'none'}")

    def check_new_name(self, name: str) -> str:
        """``name`` stripped, if it can name a new adapter (a plain folder name not yet taken)."""
        name = (name or "").strip()
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{name!r} cannot name an adapter: use 1-48 letters, digits, '_', '+', '.' or '-', "
                             "starting with a letter or digit")
        if (self.root / name).exists():
            raise ValueError(f"an adapter named {name!r} already exists in the bank; choose another name")
        return name

    def staging(self) -> Path:
        """A fresh hidden folder inside the bank for one run (same file system, so publishing is a rename)."""
        path = self.root / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    def publish(self, folder: Path, name: str) -> Adapter:
        """Move a finished adapter folder into the bank as ``name`` in one rename."""
        name = self.check_new_name(name)
        missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"{folder} is not a complete adapter (missing {', '.join(missing)})")
        os.rename(folder, self.root / name)  # atomic; refuses a destination created meanwhile unless empty
        return self.get(name)

    def remove_stale_staging(self) -> list[Path]:
        """Delete staging folders of processes that are gone (killed, or a crash); those of a running
        demo sharing the bank are left alone."""
        if not self.root.is_dir():
            return []
        stale = [p for p in self.root.glob(f"{STAGING_PREFIX}*") if p.is_dir() and not _alive(_staging_pid(p))]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return stale


def _staging_pid(folder: Path) -> int:
    try:
        return int(folder.name[len(STAGING_PREFIX):].split("-")[0])
    except ValueError:
        return 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
