"""Continuing an adaptation from a saved adapter (``adapt(init_adapter=DIR)``, ``tts-adapt adapt --init-adapter``).

After the strategy has wrapped the model, the LoRA factors of an earlier adapter are copied into the matching
trainable parameters, so training goes on from that adapter instead of from peft's initialisation. What stays
as it is in every strategy:

* the new target gets its own conditioning (its d-vector, or a new speaker-table row); the earlier adapter's
  conditioning and trained speaker rows are not loaded;
* a penalty on ΔW (l2, diag, kfac, ekfac) is computed on ΔW = s · B A, the update from the base model, so it
  stays anchored at the base model: the continual form of a Laplace prior from the pretraining data; LaLoRA's
  penalty stays anchored at the point of its curvature fit;
* layers the earlier adapter does not hold (a selective adapter leaves out its closed blocks) keep their fresh
  initialisation (LoRA-B = 0: no update).

An adapter of another base model, rank, alpha or set of target layers is refused (:class:`InitAdapterError`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from tts_adapt.adapt.adapter import TARGET_FILE, Adapter, AdapterFolderError, AdapterMismatchError
from tts_adapt.adapt.lora import ADAPTER_NAME

log = logging.getLogger(__name__)
WEIGHTS_FILE = "adapter_model.safetensors"


class InitAdapterError(ValueError):
    """An adapter that training cannot continue from: unreadable, of another base model or another LoRA setup."""


@dataclass
class LoadedInit:
    """What :func:`load_init_adapter` did, for the run record."""

    path: str
    fingerprint: str  # sha256 of the adapter's weights file
    loaded: int  # LoRA tensors copied
    fresh: list[str] = field(default_factory=list)  # LoRA tensors the earlier adapter does not hold

    def to_dict(self) -> dict:
        return {"path": self.path, "fingerprint": self.fingerprint, "loaded_tensors": self.loaded,
                "fresh_tensors": self.fresh}


def adapter_fingerprint(folder: str | Path) -> str:
    """sha256 of an adapter's LoRA weights file: which weights a continued run started from."""
    from tts_adapt.adapt.train import file_fingerprint

    return file_fingerprint(Path(folder) / WEIGHTS_FILE)


def read_init_adapter(folder: str | Path, backend) -> Adapter:
    """The adapter of ``folder``, checked to belong to ``backend``'s base model (before the new target is added:
    the fingerprint is the base model's)."""
    try:
        adapter = Adapter.load(folder)
    except AdapterFolderError as err:
        raise InitAdapterError(f"--init-adapter: {err}") from None
    if not adapter.base_fingerprint:
        raise InitAdapterError(f"{adapter.path / TARGET_FILE}: the adapter does not record its base model (made by "
                               "an earlier version), so it cannot be checked; continue from an adapter made since")
    try:
        adapter.check_base(backend)
    except AdapterMismatchError as err:
        raise InitAdapterError(f"--init-adapter: {err}") from None
    return adapter


def load_init_adapter(peft_model: nn.Module, adapter: Adapter, targets: list[str], rank: int, alpha: float
                      ) -> LoadedInit:
    """Copy ``adapter``'s LoRA factors into the LoRA parameters of ``peft_model`` (wrapped on ``targets`` with
    ``rank`` and ``alpha``), in place. Parameter names are peft's: the file's ``…lora_A.weight`` is the model's
    ``…lora_A.default.weight``. Refused: another rank or alpha, other target layers, a tensor the model has no
    parameter for or of another shape."""
    import torch
    from safetensors.torch import load_file

    config_path = adapter.path / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InitAdapterError(f"{config_path}: unreadable ({err})") from None
    if config.get("peft_type") != "LORA":
        raise InitAdapterError(f"{config_path}: not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    if int(config.get("r", -1)) != rank or float(config.get("lora_alpha", float("nan"))) != float(alpha):
        raise InitAdapterError(f"{adapter.path}: an adapter of rank {config.get('r')} and alpha "
                               f"{config.get('lora_alpha')}; this run has rank {rank} and alpha {alpha:g}: continue "
                               "with the same --rank and --alpha")
    recorded = _recorded_targets(adapter)
    if recorded is not None:  # the run's own list of layers
        theirs, ours = sorted(set(recorded) - set(targets)), sorted(set(targets) - set(recorded))
    else:  # only peft's config, whose target_modules may be suffixes of the names (or one regex)
        modules = config.get("target_modules") or []
        theirs = [] if isinstance(modules, str) else \
            sorted(m for m in modules if not any(peft_covers([m], t) for t in targets))
        ours = sorted(t for t in targets if not peft_covers(modules, t))
    if theirs or ours:
        raise InitAdapterError(
            f"{adapter.path}: the adapter adapts other layers than this run"
            + (f"; only in the adapter: {', '.join(theirs[:5])}" if theirs else "")
            + (f"; only in this run: {', '.join(ours[:5])}" if ours else "")
            + "; continue with its --targets")
    tensors = load_file(str(adapter.path / WEIGHTS_FILE))
    params = {_saved_name(n): p for n, p in peft_model.named_parameters() if ".lora_" in n}
    lora_tensors = {k: v for k, v in tensors.items() if ".lora_" in k}  # not the earlier voice's speaker rows
    unknown = sorted(set(lora_tensors) - set(params))
    if unknown:
        raise InitAdapterError(f"{adapter.path / WEIGHTS_FILE}: {len(unknown)} LoRA tensor(s) this model has no "
                               f"parameter for ({', '.join(unknown[:3])}); was it made for another model?")
    wrong = [f"{k} {tuple(v.shape)} (here {tuple(params[k].shape)})" for k, v in lora_tensors.items()
             if v.shape != params[k].shape]
    if wrong:
        raise InitAdapterError(f"{adapter.path / WEIGHTS_FILE}: tensors of another shape: {', '.join(wrong[:3])}")
    with torch.no_grad():
        for k, v in lora_tensors.items():
            params[k].copy_(v.to(params[k].dtype))
    fresh = sorted(set(params) - set(lora_tensors))
    if fresh:
        log.info("%s holds no weights for %d LoRA tensor(s) (e.g. %s): they keep their fresh initialisation",
                 adapter.path, len(fresh), fresh[0])
    return LoadedInit(str(adapter.path), adapter_fingerprint(adapter.path), len(lora_tensors), fresh)


def peft_covers(modules: str | list[str], name: str) -> bool:
    """Whether peft's ``target_modules`` (a regex, or names matched as the module name's dotted suffix; peft saves
    a long list of full names as the shortest such suffixes) select the module ``name``."""
    if isinstance(modules, str):
        return re.fullmatch(modules, name) is not None
    return any(name == m or name.endswith("." + m) for m in modules)


def _saved_name(name: str) -> str:
    """The name peft saves a parameter under: the adapter's name left out."""
    return name.replace(f".{ADAPTER_NAME}.", ".")


def _recorded_targets(adapter: Adapter) -> list[str] | None:
    """The target layers the adapter's run trained (recorded with its conditioning), None if not recorded."""
    from safetensors import safe_open

    with safe_open(str(adapter.path / TARGET_FILE), "pt") as fh:
        meta = fh.metadata() or {}
    try:
        return list(json.loads(meta["targets"])) or None
    except (KeyError, ValueError):
        return None
