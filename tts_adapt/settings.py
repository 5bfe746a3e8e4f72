"""Settings shared by every stage: reading YAML configuration files into the dataclass configs, and
checking their numeric ranges. Each stage's config dataclass lives in a module named after it
(``adapt/adapt_config.py``: ``AdaptConfig``, ``data/corpus/corpus_config.py``: ``CorpusConfig``,
``models/pretrain_config.py``: ``PretrainConfig``, ``curvature/curvature_config.py``: ``CurvatureConfig``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def load_section(path: str | Path, section: str, config_cls) -> dict:
    """The ``section`` mapping of a YAML file, checked against ``config_cls``'s fields.

    Unknown keys are an error naming the key, the file and the valid keys, so a
    typo never silently falls back to a default.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if section not in data:
        raise ValueError(f"{path}: no '{section}:' section (found: {', '.join(data) or 'nothing'})")
    values = dict(data[section] or {})
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)} in '{section}:'; valid: {', '.join(sorted(valid))}")
    return values


_BOUNDS = {">": lambda v, b: v > b, ">=": lambda v, b: v >= b, "<": lambda v, b: v < b, "<=": lambda v, b: v <= b}


def check_fields(config) -> None:
    """Refuse numeric settings that cannot be meant: every int or float field of the dataclass ``config``
    must be a finite number (not a bool), within the bounds its field metadata gives as ``"range"``
    (e.g. ``"> 0"``, ``">= 0, < 1"``); None passes where a field allows it. The error names the field."""
    import math

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None or isinstance(value, (str, tuple, list, dict)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{f.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        for bound in filter(None, (b.strip() for b in f.metadata.get("range", "").split(","))):
            op, limit = bound.split()
            if not _BOUNDS[op](value, float(limit)):
                raise ValueError(f"{f.name} must be {op} {limit}, got {value}")
