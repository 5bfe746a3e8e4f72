"""Reading YAML configuration files into the toolkit's dataclass configs."""

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
