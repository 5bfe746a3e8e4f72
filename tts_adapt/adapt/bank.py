"""The adapter bank: one LoRA adapter per voice on one frozen base model (isolation), and new voices made by
task arithmetic on their weight updates (combination).

A bank is a folder of adapter folders, one per voice, named by the sub-folder (``tts-adapt quickstart``, the
demo's Clone tab and ``tts-adapt bank add`` write them)::

    BANK/
      alice/   adapter_config.json, adapter_model.safetensors, target_speaker.safetensors, run.json [, eval/]
      bob/     ...
      .staging-<pid>-<id>/   a copy or a run in progress (hidden: never listed)

Every adapter trains only its own LoRA factors (and, on a speaker-ID-table model, its own speaker row) on the
frozen base, so adding or removing a voice never touches another one's files. A new adapter is built in a
hidden staging folder inside the bank and appears under its name by one atomic rename; a removed one leaves
its name by one rename before it is deleted.

:func:`merge_adapters` writes the adapter of a weighted combination of voices through peft's
``add_weighted_adapter``: with ``cat`` its update is exactly ΔW = Σ_i w_i ΔW_i (see :data:`COMBINATIONS`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tts_adapt.adapt.adapter import ADAPTER_FILES, TARGET_FILE, Adapter, AdapterFolderError, is_adapter_folder
from tts_adapt.adapt.continual import peft_covers

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]{0,47}")
STAGING_PREFIX = ".staging-"
PEFT_CONFIG = "adapter_config.json"

#: The combination whose update is the weighted sum of the voices' updates, ΔW = Σ w_i ΔW_i: peft's ``cat``
#: stacks the factors, B = [B_1 … B_n] and A = [w_1 s_1 A_1; …; w_n s_n A_n] at scale 1, so B A = Σ w_i s_i B_i A_i
#: (for a Conv1d, stacking the LoRA-A output channels and the 1×1 LoRA-B input channels is the same sum).
EXACT_COMBINATIONS = ("cat",)
#: Combinations that merge the A factors and the B factors separately (peft's ``linear``, TIES, DARE and
#: magnitude pruning): B' A' = (Σ √w_i B_i)(Σ √w_j A_j) holds cross terms B_i A_j of different voices, so the
#: update is not Σ w_i ΔW_i (and TIES / DARE / pruning also drop entries of the factors).
SEPARATE_FACTOR_COMBINATIONS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: Combinations that form Σ w_i ΔW_i and truncate it by SVD to the largest input rank: peft reshapes only
#: Conv2d kernels, so they fail on Conv1d layers (kernel 3 or 1); on Linear layers they are exact only where
#: the sum's rank fits the truncation.
SVD_COMBINATIONS = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATIONS = EXACT_COMBINATIONS + SEPARATE_FACTOR_COMBINATIONS + SVD_COMBINATIONS
#: Combinations that prune to a ``density`` (the fraction of entries kept).
DENSITY_COMBINATIONS = ("ties", "dare_linear", "dare_ties", "magnitude_prune", "ties_svd", "dare_linear_svd",
                        "dare_ties_svd", "magnitude_prune_svd")
#: An exact merge may differ from Σ w_i ΔW_i by float rounding only: the largest deviation accepted, in units of
#: the weights' machine epsilon, relative to the largest entry of the sum (float32 products measure about 1).
EXACT_TOLERANCE_EPS = 64
MERGE_ADAPTER_PREFIX = "voice"


class BankError(ValueError):
    """A bank operation refused: an unknown or taken name, an adapter that does not fit the bank, a merge
    that cannot be done as asked."""


@dataclass(frozen=True)
class BankEntry:
    """One adapter of a bank as ``tts-adapt bank list`` shows it."""

    name: str
    strategy: str | None
    lam: float | None
    rank: int | None
    base_model: str | None  # the base model folder its run.json names
    base_fingerprint: str  # :meth:`TTSBackend.fingerprint` of the base model ("" when not recorded)
    conditioning: str  # "d_vector" or "id_table"
    size_bytes: int
    merged_from: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "merged_from": list(self.merged_from)}


class AdapterBank:
    """Adapters stored as sub-folders of ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ reading
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

    def entries(self) -> list[BankEntry]:
        """Every adapter with its settings, base model and size on disk."""
        return [_entry(a) for a in self.adapters()]

    def base_fingerprints(self) -> set[str]:
        """The base-model fingerprints its adapters record (one for a bank on one base model)."""
        return {a.base_fingerprint for a in self.adapters() if a.base_fingerprint}

    # ------------------------------------------------------------------ writing
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

    def add(self, name: str, adapter_dir: str | Path, *, model: str | Path | None = None) -> Adapter:
        """Copy the adapter of ``adapter_dir`` into the bank as ``name``, atomically: the copy is made in a
        staging folder, read back and renamed into place, so a failed add leaves nothing behind.

        Refused (:class:`BankError`, naming the file and the reason): a name that is taken or not a plain
        folder name, a folder that is not a complete adapter, an adapter that does not record its base model,
        and one of a base model other than the bank's (the fingerprint its other adapters record, and the
        base model folder ``model`` when given)."""
        try:
            name = self.check_new_name(name)
        except ValueError as err:
            raise BankError(str(err)) from None
        adapter = read_adapter(adapter_dir)
        if not adapter.base_fingerprint:
            raise BankError(f"{adapter.path / TARGET_FILE}: the adapter does not record its base model (made by an "
                            "earlier version), so it cannot be checked against the bank's base model; adapt it again")
        theirs = adapter.base_fingerprint
        ours = self.base_fingerprints()
        if ours and theirs not in ours:
            raise BankError(f"{adapter.path / TARGET_FILE}: the adapter was trained on another base model "
                            f"(fingerprint {theirs[:12]}) than the bank's ({', '.join(sorted(f[:12] for f in ours))}); "
                            "a bank holds adapters of one base model")
        if model is not None:
            from tts_adapt.models.base import TTSBackend

            given = TTSBackend.from_pretrained(model).fingerprint()
            if theirs != given:
                raise BankError(f"{adapter.path / TARGET_FILE}: the adapter was trained on another base model "
                                f"(fingerprint {theirs[:12]}) than {model} ({given[:12]})")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.staging()
        try:
            copy = staging / name
            shutil.copytree(adapter.path, copy, ignore=_not_copied, copy_function=shutil.copy2)
            read_adapter(copy)  # the copy is whole before it gets its name
            return self.publish(copy, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove(self, name: str) -> Path:
        """Delete the adapter ``name``: renamed out of the bank's names in one step, then deleted (a crash in
        between leaves a hidden staging folder that :meth:`remove_stale_staging` deletes). Returns its path."""
        adapter = self.lookup(name)
        staging = self.staging()
        os.rename(adapter.path, staging / adapter.name)
        shutil.rmtree(staging)
        return adapter.path

    def lookup(self, name: str) -> Adapter:
        """:meth:`get` with a :class:`BankError` for an unknown name."""
        try:
            return self.get(name)
        except KeyError as err:
            raise BankError(err.args[0]) from None

    def merge(self, weights: Sequence[tuple[str, float]] | str, out: str | Path, **options) -> dict:
        """Merge voices of the bank, ``[(name, weight), …]`` or ``"name1=w1,name2=w2"``, into a new adapter
        folder ``out``; see :func:`merge_adapters` for ``options``. Returns the merge record."""
        if isinstance(weights, str):
            weights = parse_weights(weights)
        return merge_adapters([(self.lookup(n), w) for n, w in weights], out, **options)

    def remove_stale_staging(self) -> list[Path]:
        """Delete staging folders of processes that are gone (killed, or a crash); those of a running
        demo sharing the bank are left alone."""
        if not self.root.is_dir():
            return []
        stale = [p for p in self.root.glob(f"{STAGING_PREFIX}*") if p.is_dir() and not _alive(_staging_pid(p))]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return stale


# ---------------------------------------------------------------------------- reading adapters
def read_adapter(folder: str | Path) -> Adapter:
    """The adapter of ``folder``, with its peft config checked (a LoRA adapter); a :class:`BankError` naming the
    file and the reason otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BankError(f"{folder}: no such adapter folder")
    try:
        adapter = Adapter.load(folder)
    except AdapterFolderError as err:
        raise BankError(str(err)) from None
    lora_config(adapter)
    return adapter


def lora_config(adapter: Adapter) -> dict:
    """The adapter's peft config (adapter_config.json), checked to be a LoRA adapter."""
    path = adapter.path / PEFT_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BankError(f"{path}: unreadable ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise BankError(f"{path}: not a LoRA adapter config (peft_type {kind!r})")
    return config


def _entry(adapter: Adapter) -> BankEntry:
    cfg = adapter.run.get("config") or {}
    merge = adapter.run.get("merge") or {}
    size = sum(p.stat().st_size for p in adapter.path.rglob("*") if p.is_file())
    lam = cfg.get("lam")
    return BankEntry(name=adapter.name, strategy=cfg.get("strategy"), lam=None if lam is None else float(lam),
                     rank=cfg.get("rank"), base_model=adapter.run.get("base_model"),
                     base_fingerprint=adapter.base_fingerprint,
                     conditioning="id_table" if adapter.d_vector is None else "d_vector", size_bytes=size,
                     merged_from=tuple(v["name"] for v in merge.get("voices", [])))


def _not_copied(folder: str, names: list[str]) -> set[str]:
    """Hidden files (temporary files of an interrupted write) and a training checkpoint stay behind."""
    from tts_adapt.adapt.train import CHECKPOINT_DIR

    return {n for n in names if n.startswith(".") or (n == CHECKPOINT_DIR and Path(folder, n).is_dir())}


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


# ---------------------------------------------------------------------------- merging
def parse_weights(text: str) -> list[tuple[str, float]]:
    """``"alice=0.5,bob=0.5"`` as ``[("alice", 0.5), ("bob", 0.5)]``; a bad item is a :class:`BankError`."""
    pairs = []
    for item in (text or "").split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name.strip():
            raise BankError(f"{item.strip()!r} is not NAME=WEIGHT (give the voices as name1=w1,name2=w2)")
        try:
            weight = float(value)
        except ValueError:
            raise BankError(f"{item.strip()!r}: the weight {value!r} is not a number") from None
        pairs.append((name.strip(), weight))
    return pairs


def merge_adapters(voices: Sequence[tuple[Adapter, float]], out: str | Path, *, combination: str = "cat",
                   model: str | Path | None = None, density: float | None = None, allow_inexact: bool = False,
                   seed: int = 0) -> dict:
    """Write to ``out`` (a new folder) the adapter of the weighted combination of ``voices``
    (``[(adapter, weight), …]``, adapters of one base model), made by peft's ``add_weighted_adapter``.

    Weight updates: ``combination`` ``cat`` (the default) gives exactly ΔW = Σ w_i ΔW_i in every layer
    (checked after merging, up to float rounding). The others are not that sum (see
    :data:`SEPARATE_FACTOR_COMBINATIONS`, :data:`SVD_COMBINATIONS`); they are refused unless ``allow_inexact``,
    and then run with a warning and the measured deviation in the record. The SVD ones are refused on
    adapters of Conv1d layers, where peft's SVD merge fails. ``density`` (the fraction kept) is required by
    TIES, DARE and magnitude pruning; ``seed`` seeds DARE's random drop.

    Conditioning: the merged voice is spoken as the speaker ``target`` like any adapter's. Its d-vector (or,
    on a speaker-ID-table model, its trained speaker-table row) is the weighted mean Σ w_i c_i / Σ w_i of the
    voices', a point among the voices rather than an update, so the weights must sum to more than zero; a
    merged d-vector is rescaled to the voices' mean norm (speaker encoders give vectors of one norm).

    The base model is ``model``, else the one the first adapter's run.json names, else the shipped one; it
    must be the adapters' base model. Returns the merge record, also written to ``out``/run.json."""
    import torch

    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.synthesis import default_model_dir

    out = Path(out)
    adapters, weights = _check_merge_request(voices, out, combination, density, allow_inexact)
    model_dir = Path(model or _recorded_base_model(adapters) or default_model_dir())
    backend = TTSBackend.from_pretrained(model_dir)
    for adapter in adapters:
        adapter.check_base(backend)
    base_fingerprint = backend.fingerprint()
    if combination in SVD_COMBINATIONS:
        _refuse_svd_on_conv(adapters, backend)
    d_vector, row_weights = _merged_conditioning(adapters, weights)

    from tts_adapt.adapt.adapter import add_target_speaker

    rows = [row for added in add_target_speaker(backend, d_vector).values() for row in added]
    for adapter in adapters:
        if list(adapter.speaker_rows) != rows:
            raise BankError(f"{adapter.path / TARGET_FILE}: the voice's speaker row {list(adapter.speaker_rows)} is "
                            f"not the row a new voice gets on this model {rows}")
    names = [f"{MERGE_ADAPTER_PREFIX}{i}" for i in range(len(adapters))]
    peft_model = _load_voices(backend.model, adapters, names)
    from tts_adapt.adapt.lora import ADAPTER_NAME

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            peft_model.add_weighted_adapter(names, list(weights), ADAPTER_NAME, combination_type=combination,
                                            density=density)
        except (ValueError, RuntimeError, TypeError) as err:
            raise BankError(f"peft could not merge {', '.join(a.name for a in adapters)} with {combination!r}: "
                            f"{err}") from None
    if row_weights is not None:
        _set_merged_rows(peft_model, names, row_weights, ADAPTER_NAME)
    deviation, worst_layer = _deviation(peft_model, names, weights, ADAPTER_NAME)
    exact = combination in EXACT_COMBINATIONS or len(adapters) == 1  # one voice: peft scales its factors
    tolerance = EXACT_TOLERANCE_EPS * torch.finfo(torch.float32).eps
    if exact and deviation > tolerance:
        raise RuntimeError(f"the {combination!r} merge is {deviation:.2e} (relative, in {worst_layer}) from the "
                           f"weighted sum of the updates, more than rounding ({tolerance:.1e}); the installed peft "
                           "merges differently from the version this was checked with")
    if not exact:
        log.warning("%s: the %r merge is not the weighted sum of the voices' updates (%s); it deviates from it "
                    "by %.3g of the sum's largest entry (in %s)", out, combination, _why_inexact(combination),
                    deviation, worst_layer)
    peft_model.set_adapter(ADAPTER_NAME)
    for name in names:
        peft_model.delete_adapter(name)

    from tts_adapt import __version__

    config = peft_model.peft_config[ADAPTER_NAME]
    names_now = dict(backend.model.named_modules())
    targets = sorted({t for a in adapters for t in _targets(a, names_now)})  # the layers by their full names
    record = {
        "tts_adapt_version": __version__, "base_model": str(model_dir),
        "config": {"strategy": "merge", "lam": None, "rank": int(config.r)}, "steps": 0, "targets": targets,
        "merge": {"combination": combination, "exact": exact, "max_relative_deviation": deviation,
                  "worst_layer": worst_layer, "density": density, "seed": seed,
                  "weights_sum": sum(weights),
                  "voices": [{"name": a.name, "path": str(a.path), "weight": w,
                              "strategy": (a.run.get("config") or {}).get("strategy"),
                              "lam": (a.run.get("config") or {}).get("lam"),
                              "rank": int(lora_config(a).get("r", 0))} for a, w in zip(adapters, weights)],
                  "conditioning": ("weighted mean of the voices' "
                                   + ("d-vectors, rescaled to their mean norm" if d_vector is not None
                                      else "speaker-table rows"))},
    }
    _save_merged(out, peft_model, d_vector, record, base_fingerprint, targets)
    return record


def _check_merge_request(voices, out: Path, combination: str, density, allow_inexact: bool
                         ) -> tuple[list[Adapter], list[float]]:
    """Everything that can be refused before the model is loaded."""
    if combination not in COMBINATIONS:
        raise BankError(f"unknown combination {combination!r}; valid: {', '.join(COMBINATIONS)}")
    voices = list(voices)
    if not voices:
        raise BankError("nothing to merge: give at least one voice and its weight")
    adapters, weights = [a for a, _ in voices], [float(w) for _, w in voices]
    # the same folder twice (adapters of different folders may share a name, e.g. sweep cells' "adapter")
    paths = [a.path.resolve() for a in adapters]
    repeated = sorted({a.name for a, p in zip(adapters, paths) if paths.count(p) > 1})
    if repeated:
        raise BankError(f"{', '.join(repeated)} given more than once; give each voice one weight")
    bad = [f"{a.name}={w}" for a, w in zip(adapters, weights) if not math.isfinite(w)]
    if bad:
        raise BankError(f"weights must be finite numbers: {', '.join(bad)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BankError(f"{out}: already exists; the merged adapter goes to a new folder")
    if combination in DENSITY_COMBINATIONS:
        if density is None or not 0.0 < density <= 1.0:
            raise BankError(f"the {combination!r} combination prunes the factors and needs a density in (0, 1] "
                            f"(the fraction of entries kept), got {density}")
    elif density is not None:
        raise BankError(f"the {combination!r} combination prunes nothing; density applies to "
                        f"{', '.join(DENSITY_COMBINATIONS)}")
    if combination not in EXACT_COMBINATIONS and len(adapters) > 1 and not allow_inexact:
        raise BankError(f"the {combination!r} combination is not the weighted sum of the voices' updates: "
                        f"{_why_inexact(combination)}. Use 'cat' (exact), or allow an inexact merge explicitly")
    for adapter in adapters:
        config = lora_config(adapter)
        for flag in ("use_rslora", "use_dora"):
            if config.get(flag):
                raise BankError(f"{adapter.path / PEFT_CONFIG}: {flag} adapters cannot be merged by task "
                                "arithmetic here (their update is not scale · B A)")
    fingerprints = {a.base_fingerprint for a in adapters if a.base_fingerprint}
    if len(fingerprints) > 1:
        by = ", ".join(f"{a.name}: {a.base_fingerprint[:12] or 'unrecorded'}" for a in adapters)
        raise BankError(f"the voices were trained on different base models ({by}); task arithmetic needs one "
                        "frozen base")
    if len({a.d_vector is None for a in adapters}) > 1:
        raise BankError("the voices mix d-vector and speaker-ID-table adapters; they are of different models")
    return adapters, weights


def _why_inexact(combination: str) -> str:
    if combination in SVD_COMBINATIONS:
        return ("peft truncates the sum by SVD to the largest input rank (and applies TIES / DARE / pruning "
                "first where named)")
    return ("peft merges the A factors and the B factors separately, so B'A' = (Σ√w_i B_i)(Σ√w_j A_j) holds "
            "cross terms of different voices" + ("" if combination == "linear" else
                                                 ", and drops entries of the factors"))


def _recorded_base_model(adapters: list[Adapter]) -> str | None:
    recorded = adapters[0].run.get("base_model")
    return recorded if recorded and Path(recorded).is_dir() else None


def _refuse_svd_on_conv(adapters: list[Adapter], backend) -> None:
    from torch import nn

    modules = dict(backend.model.named_modules())
    convs = sorted({t for a in adapters for t in _targets(a, modules) if isinstance(modules[t], nn.Conv1d)})
    if convs:
        raise BankError(f"the SVD combinations fail on Conv1d layers (peft reshapes only Conv2d kernels for the "
                        f"SVD, so a Conv1d update (out, in, kernel) does not factor), and the voices adapt "
                        f"{len(convs)} Conv1d layers ({', '.join(convs[:3])}{', …' if len(convs) > 3 else ''}); "
                        "use 'cat'")


def _targets(adapter: Adapter, module_names) -> list[str]:
    """The names among ``module_names`` that the adapter's peft config targets, matched as peft matches them (it
    saves a long list of layers as their shortest distinct suffixes)."""
    targets = lora_config(adapter).get("target_modules") or []
    return [name for name in module_names if name and peft_covers(targets, name)]


def _merged_conditioning(adapters: list[Adapter], weights: list[float]):
    """The merged d-vector (None for an ID-table model) and the normalised weights of the voices' speaker rows
    (None for a d-vector model)."""
    import torch

    total = sum(weights)
    if total <= 0:
        raise BankError(f"the weights sum to {total:g}; the merged voice's conditioning is the weighted mean of "
                        "the voices' and needs weights that sum to more than zero")
    mean_weights = [w / total for w in weights]
    if adapters[0].d_vector is None:
        return None, mean_weights
    vectors = [a.d_vector.float() for a in adapters]
    if len({v.shape for v in vectors}) > 1:
        raise BankError("the voices' d-vectors differ in size: "
                        + ", ".join(f"{a.name}: {tuple(v.shape)}" for a, v in zip(adapters, vectors)))
    mean = sum(w * v for w, v in zip(mean_weights, vectors))
    norm, target_norm = float(mean.norm()), sum(float(v.norm()) for v in vectors) / len(vectors)
    if not norm > target_norm * EXACT_TOLERANCE_EPS * torch.finfo(mean.dtype).eps:  # cancelled out (or NaN)
        raise BankError("the voices' d-vectors cancel out under these weights; the merged voice has no direction")
    return mean * (target_norm / norm), None


def _load_voices(model, adapters: list[Adapter], names: list[str]):
    from peft import PeftModel

    peft_model = None
    for adapter, name in zip(adapters, names):
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name=name,
                                                       is_trainable=False)
            else:
                peft_model.load_adapter(str(adapter.path), adapter_name=name, is_trainable=False)
        except Exception as err:  # peft's own errors (a module the model lacks, a bad file) without the folder
            raise BankError(f"{adapter.path}: peft could not load the adapter ({err})") from None
    return peft_model


def _token_layers(peft_model):
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    return [m for m in peft_model.modules() if isinstance(m, TrainableTokensLayer)]


def _set_merged_rows(peft_model, names: list[str], row_weights: list[float], merged: str) -> None:
    """The merged adapter's speaker row(s): the weighted mean of the voices' trained rows (peft's trainable
    tokens hold the rows' values, not offsets)."""
    import torch

    for layer in _token_layers(peft_model):
        if merged not in layer.trainable_tokens_delta:
            continue
        indices = [layer.token_indices.get(n) for n in names]
        if any(i != indices[0] for i in indices):
            raise BankError(f"the voices train different speaker rows ({indices}); they are not one bank's voices")
        with torch.no_grad():
            layer.trainable_tokens_delta[merged].copy_(
                sum(w * layer.trainable_tokens_delta[n] for w, n in zip(row_weights, names)))


def _deviation(peft_model, names: list[str], weights: list[float], merged: str) -> tuple[float, str]:
    """The largest deviation of the merged update from Σ w_i ΔW_i over LoRA layers, relative to the largest
    entry of the sum, and the layer where it is largest."""
    import torch
    from peft.tuners.lora import layer as lora_layer

    worst, where = 0.0, ""
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if not isinstance(module, lora_layer.LoraLayer) or merged not in module.lora_A:
                continue
            got = module.get_delta_weight(merged).double()
            want = sum(w * module.get_delta_weight(n).double() for w, n in zip(weights, names) if n in module.lora_A)
            scale = float(want.abs().max()) if isinstance(want, torch.Tensor) else 0.0
            diff = float((got - want).abs().max())
            rel = diff / scale if scale > 0 else diff
            if rel >= worst:
                worst, where = rel, name.removeprefix("base_model.model.")
    return worst, where


def _save_merged(out: Path, peft_model, d_vector, record: dict, base_fingerprint: str, targets: list[str]) -> None:
    """The merged adapter written in a hidden sibling folder and renamed onto ``out`` in one step."""
    from tts_adapt.adapt.adapter import save_adapter

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"  # a bank's stale-staging sweep
    try:
        save_adapter(tmp, peft_model, d_vector, record, base_fingerprint=base_fingerprint, targets=targets)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

