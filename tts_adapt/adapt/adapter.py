"""An adapter folder as ``tts-adapt adapt`` writes it, and putting it on a model.

Adapter folder::

    adapter_config.json, adapter_model.safetensors   peft's adapter files (PeftModel.from_pretrained)
    target_speaker.safetensors                      the target's conditioning: its d-vector, or for a
                                                    speaker-ID-table model the index of its new table row
                                                    (the row's values are in the adapter file)
    run.json                                        the run record: settings, data, steps, wall time,
                                                    curves, metrics

:class:`Adapter` reads the folder once (:meth:`Adapter.load`); :meth:`Adapter.apply` puts it on a
backend, which then speaks the target as its speaker ``target``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import save_file

from tts_adapt.adapt.lora import exact_attention_forward
from tts_adapt.io import atomic_path, write_json_atomic
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.synthesis import default_model_dir

log = logging.getLogger(__name__)
TARGET_FILE = "target_speaker.safetensors"
TARGET_NAME = "target"
RUN_FILE = "run.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", TARGET_FILE)


class AdapterFolderError(ValueError):
    """A folder that is not a complete adapter written by ``tts-adapt adapt``, or whose files are unreadable."""


class AdapterMismatchError(ValueError):
    """An adapter put on a base model other than the one it was trained on."""


def add_target_speaker(backend: TTSBackend, d_vector: torch.Tensor | None) -> dict[str, list[int]]:
    """Make the target a speaker of the (wrapped) backend: conditioned on its d-vector, or (a speaker-ID-table
    model, ``d_vector`` None) on a new row of the speaker table, initialised to the mean of the known speakers'
    rows. Returns the rows to train with the adapter (``{embedding module: [row]}``; empty for d-vectors)."""
    return backend.add_speaker(TARGET_NAME, d_vector, sets="target")


def target_conditioning(backend: TTSBackend, clips, per_speaker: int = 20) -> torch.Tensor | None:
    """The target's d-vector from the model's own speaker encoder (None for a speaker-ID-table model)."""
    if backend.speakers.kind != "d_vector":
        return None
    return backend.embed_speaker([u.audio_path for u in clips[:per_speaker]])


def save_adapter(out: Path, peft_model, d_vector: torch.Tensor | None, card: dict, *,
                 base_fingerprint: str = "", targets: list[str] | None = None) -> None:
    """peft adapter files, the target's conditioning and the run record (``card``, written as run.json), each
    written atomically. For a speaker-ID-table model (``d_vector`` None) the conditioning file records the
    target's table row. The conditioning file also records the base model the adapter belongs to
    (``base_fingerprint``: :meth:`TTSBackend.fingerprint` before the target was added) and the adapted layers,
    which every loader checks. A failed write (a full disk) leaves no temporary folder behind."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".saving"
    try:
        peft_model.save_pretrained(str(tmp))
        for name in ("adapter_config.json", "adapter_model.safetensors"):  # os.replace: atomic per file
            (tmp / name).replace(out / name)
        if d_vector is not None:
            tensors, kind = {"d_vector": d_vector.contiguous()}, "d_vector"
        else:
            rows = [i for cfg in peft_model.peft_config.values()
                    for r in (cfg.trainable_token_indices or {}).values() for i in r]
            tensors, kind = {"speaker_row": torch.tensor(rows, dtype=torch.long)}, "id_table"
        meta = {"name": TARGET_NAME, "kind": kind, "base_model_fingerprint": base_fingerprint,
                "targets": json.dumps(sorted(targets or []))}
        with atomic_path(out / TARGET_FILE) as t:
            save_file(tensors, str(t), metadata=meta)
        write_json_atomic(out / RUN_FILE, card)
    except OSError as err:
        raise OSError(err.errno, f"{out}: could not write the adapter ({err.strerror or err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # peft also writes a template README.md; the run record is run.json


def is_adapter_folder(folder: str | Path) -> bool:
    """Does ``folder`` hold the files of an adapter (peft's two and the target's conditioning)?"""
    return all((Path(folder) / name).is_file() for name in ADAPTER_FILES)


@dataclass(frozen=True)
class Adapter:
    """A saved adapter: its folder, the target's conditioning and the run record."""

    path: Path
    #: the target's d-vector ``(dim,)``; None for an adapter of a speaker-ID-table model
    d_vector: torch.Tensor | None = field(compare=False)
    #: for a speaker-ID-table model, the speaker table row(s) the target was trained in
    speaker_rows: tuple[int, ...] = ()
    #: run.json as written by ``tts-adapt adapt`` (empty when absent or unreadable and not required)
    run: dict = field(default_factory=dict, compare=False)
    #: :meth:`TTSBackend.fingerprint` of the base model it was trained on ("" for adapters that predate it)
    base_fingerprint: str = ""

    @classmethod
    def load(cls, folder: str | Path, *, require_run: bool = False) -> "Adapter":
        """Read ``folder``: the target-speaker file and run.json. A missing adapter file is an
        :class:`AdapterFolderError`; so is a missing or unreadable run.json when ``require_run``."""
        folder = Path(folder)
        for name in ADAPTER_FILES:
            if not (folder / name).is_file():
                raise AdapterFolderError(f"{folder}: missing {name} (not an adapter folder written by "
                                         "tts-adapt adapt)")
        try:
            with safe_open(str(folder / TARGET_FILE), "pt") as fh:
                d_vector = fh.get_tensor("d_vector") if "d_vector" in fh.keys() else None
                rows = tuple(fh.get_tensor("speaker_row").tolist()) if "speaker_row" in fh.keys() else ()
                meta = fh.metadata() or {}
            with safe_open(str(folder / "adapter_model.safetensors"), "pt") as fh:
                fh.keys()
        except Exception as err:  # safetensors raises its own types for truncated or foreign files
            raise AdapterFolderError(f"{folder}: an adapter file is unreadable ({err})") from None
        run_path = folder / RUN_FILE
        try:
            run = json.loads(run_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if require_run:
                raise AdapterFolderError(f"{folder}: no {RUN_FILE} (not an adapter folder written by "
                                         "tts-adapt adapt)") from None
            run = {}
        except (OSError, ValueError) as err:
            if require_run:
                raise AdapterFolderError(f"{run_path}: unreadable ({err})") from err
            run = {}
        return cls(folder, d_vector, rows, run, meta.get("base_model_fingerprint", ""))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def settings(self) -> str:
        """Strategy, λ, rank and steps in a few words (from the run record)."""
        cfg = self.run.get("config", {})
        if not cfg:
            return "settings unknown (no run.json)"
        lam = f", λ = {cfg['lam']:g}" if cfg.get("lam") else ""
        return f"{cfg.get('strategy')}{lam}, rank {cfg.get('rank')}, {self.run.get('steps', '?')} steps"

    def check_base(self, backend: TTSBackend) -> None:
        """Refuse a base model other than the adapter's own, naming both fingerprints."""
        if not self.base_fingerprint:
            log.warning("%s does not record its base model (made by an earlier version); it cannot be checked",
                        self.path)
            return
        theirs = backend.fingerprint()
        if theirs != self.base_fingerprint:
            raise AdapterMismatchError(f"{self.path}: the adapter was trained on another base model (fingerprint "
                                       f"{self.base_fingerprint[:12]}, this model's {theirs[:12]}); load the model "
                                       f"it was made on ({self.run.get('base_model', 'see its run.json')})")

    def apply(self, backend: TTSBackend) -> TTSBackend:
        """Put the adapter on ``backend`` (in place): its LoRA weights via peft's ``PeftModel.from_pretrained``
        and its target speaker (named ``target``), after checking that ``backend`` is the adapter's base
        model. Returns ``backend``."""
        self.check_base(backend)
        if (self.d_vector is None) != (backend.speakers.kind == "id_table"):
            raise ValueError(f"{self.path}: an adapter of a "
                             f"{'speaker-ID-table' if self.d_vector is None else 'd-vector'} model cannot go on "
                             f"this {backend.speakers.kind.replace('_', '-')} model")
        rows = add_target_speaker(backend, self.d_vector)  # the new row's trained values come with the adapter
        saved_rows = list(self.speaker_rows)
        if saved_rows and sum(rows.values(), []) != saved_rows:
            raise ValueError(f"{self.path}: the adapter's speaker row {saved_rows} is not the row the target gets "
                             f"on this model {sum(rows.values(), [])}; was the adapter made on another model?")
        try:
            peft_model = PeftModel.from_pretrained(backend.model, str(self.path), adapter_name="default",
                                                   is_trainable=False)
        except Exception as err:  # peft's own errors (a module the model lacks, a bad file) without the folder
            raise AdapterFolderError(f"{self.path}: peft could not load the adapter ({err})") from None
        exact_attention_forward(peft_model)  # peft's own attention forward adds out_proj's update twice
        backend.model.eval()
        return backend

    def speak_zero_shot(self, backend: TTSBackend) -> bool:
        """Make the target a speaker of an unadapted ``backend`` from its d-vector (zero-shot); False (nothing
        done) for an adapter of a speaker-ID-table model, whose target has no d-vector."""
        if self.d_vector is None:
            return False
        add_target_speaker(backend, self.d_vector)
        return True


def load_adapter(backend: TTSBackend, adapter_dir: str | Path) -> TTSBackend:
    """Put the adapter saved in ``adapter_dir`` on ``backend`` (in place); see :meth:`Adapter.apply`."""
    return Adapter.load(adapter_dir).apply(backend)


def adapted_model(adapter_dir: str | Path, model: str | Path | None = None, device: str | None = None
                  ) -> TTSBackend:
    """The base model ``model`` (default: the shipped one) with the adapter of ``adapter_dir`` on it, on
    ``device`` (a ``--device`` value; None: the CPU, where models load)."""
    backend = load_adapter(TTSBackend.from_pretrained(model or default_model_dir()), adapter_dir)
    return backend.to(device) if device is not None else backend
