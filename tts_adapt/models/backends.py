"""The built-in backends, registered by importing them, and the lookup of a backend by name or by model
folder. Every model the toolkit loads goes through :func:`load_backend` (``TTSBackend.from_pretrained``
calls it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tts_adapt.data.audio import AudioConfig
from tts_adapt.models import fastpitch, glowtts, vits, zoo, zoo_fastpitch  # noqa: F401  they register on import
from tts_adapt.models.base import BACKENDS, CHECKPOINT_FILE, CONFIG_FILE, META_FILE, ModelFolderError, TTSBackend
from tts_adapt.models.features import FeatureStats
from tts_adapt.models.speakers import SPEAKERS_FILE, SpeakerTable


def get_backend(name: str) -> type[TTSBackend]:
    """The backend class registered as ``name`` (an unknown name lists the valid ones)."""
    return BACKENDS.get_class(name)


def load_backend(folder: str | Path, kind: type[TTSBackend] = TTSBackend) -> TTSBackend:
    """Load a model: a folder written by :meth:`TTSBackend.save_pretrained` (any registered backend), a
    downloaded coqui-tts zoo model folder, or a zoo model name (``tts_models/en/vctk/vits``). A model that
    is not a ``kind`` is refused (:class:`ModelFolderError`)."""
    if zoo.is_zoo_name(folder):
        folder = zoo.download(str(folder))
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    if zoo.is_zoo_folder(folder):
        backend = zoo.load_zoo_folder(folder)
        if kind is not TTSBackend and not isinstance(backend, kind):
            raise ModelFolderError(f"{folder} holds a {backend.name} model, not {kind.name}")
        return backend
    for name in (CONFIG_FILE, CHECKPOINT_FILE, META_FILE, SPEAKERS_FILE):
        if not (folder / name).is_file():
            raise ModelFolderError(f"{folder}: missing {name} (a model folder holds {CONFIG_FILE}, "
                                   f"{CHECKPOINT_FILE}, {META_FILE} and {SPEAKERS_FILE})")
    meta = json.loads((folder / META_FILE).read_text())
    backend_cls = get_backend(meta["backend"])
    if kind is not TTSBackend and not issubclass(backend_cls, kind):
        raise ModelFolderError(f"{folder} holds a {meta['backend']} model, not {kind.name}")
    speakers = SpeakerTable.load(folder)
    model = backend_cls._load_model(folder, speakers)
    state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ModelFolderError(f"{folder / CHECKPOINT_FILE} does not match {folder / CONFIG_FILE}: "
                               f"{str(err).splitlines()[0]}") from None
    model.eval()
    return backend_cls(model, AudioConfig.from_dict(meta["audio"]), FeatureStats.from_dict(meta["stats"]),
                       speakers, meta.get("info", {}))

