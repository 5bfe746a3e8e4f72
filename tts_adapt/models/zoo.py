"""coqui-tts zoo models: by name through coqui's ``ModelManager``, or from a downloaded folder.

One code path for both: a name (``tts_models/en/vctk/vits``) is resolved by coqui's own
model manager, which returns its local copy when the model was downloaded before and
downloads it otherwise; the folder is then loaded exactly as a folder given by path.

A zoo folder holds coqui's ``config.json``, a checkpoint (``model_file.pth`` or
``model.pth``) and the files the config refers to: the speaker-ID table
(``speaker_ids.json`` / ``speakers.pth``), d-vectors (``speakers.json`` / ``speakers.pth``),
language IDs (``language_ids.json``), and YourTTS's speaker encoder (``model_se.pth`` +
``config_se.json``). The paths inside ``config.json`` point where the model was trained;
like coqui's model manager, the loader points them at the folder's own files (in memory:
the folder is never written to).

Supported architectures (detected from ``config.json``, so other zoo models of the same
architecture load too):

=====================================  ==================  ==========================================
zoo name                               backend             speakers
=====================================  ==================  ==========================================
tts_models/en/vctk/fast_pitch          ``coqui_fastpitch`` ID table (``emb_g``)
tts_models/en/vctk/vits                ``vits``            ID table (``emb_g``)
tts_models/multilingual/multi-dataset  ``yourtts``         d-vectors of its own speaker encoder
/your_tts
=====================================  ==================  ==========================================
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch

from tts_adapt.data.audio import AudioConfig
from tts_adapt.models.base import BACKENDS, CONFIG_FILE, META_FILE, ModelFolderError
from tts_adapt.models.features import FeatureStats
from tts_adapt.models.speakers import SPEAKERS_FILE, SpeakerTable

log = logging.getLogger(__name__)

#: The zoo models this toolkit is tested with, and the backend each loads into.
SUPPORTED_MODELS = {
    "tts_models/en/vctk/fast_pitch": "coqui_fastpitch",
    "tts_models/en/vctk/vits": "vits",
    "tts_models/multilingual/multi-dataset/your_tts": "yourtts",
}
#: Checkpoint names coqui's model manager looks for, in its order of preference.
CHECKPOINT_NAMES = ("model_file.pth", "model_file.pth.tar", "model.pth", "checkpoint.pth", "best_model.pth")
#: Config fields naming files of the model folder, with the names coqui's model manager falls back on.
PATH_FIELDS = {
    "audio.stats_path": ("scale_stats.npy",),
    "d_vector_file": ("speakers.json", "speakers.pth"),
    "speakers_file": ("speaker_ids.json", "speaker_ids.pth"),
    "language_ids_file": ("language_ids.json",),
    "speaker_encoder_model_path": ("model_se.pth", "model_se.pth.tar"),
    "speaker_encoder_config_path": ("config_se.json",),
}


# --------------------------------------------------------------------------- names and folders
def is_zoo_name(model: str | Path, kind: str = "tts_models") -> bool:
    """True for a coqui model name (``tts_models/<language>/<dataset>/<model>``, or of another ``kind`` such
    as ``vocoder_models``) that is not a local path."""
    text = str(model)
    return text.startswith(kind + "/") and len(text.split("/")) == 4 and not Path(text).exists()


def download(name: str) -> Path:
    """The local folder of zoo model ``name``: coqui's cached copy, downloaded first if missing."""
    from TTS.utils.manage import ModelManager

    manager = ModelManager(progress_bar=False)
    kind, language, dataset, model = name.split("/")
    if not manager.models_dict.get(kind, {}).get(language, {}).get(dataset, {}).get(model):
        raise ModelFolderError(f"{name!r} is not a coqui-tts model name; supported here: "
                               f"{', '.join(SUPPORTED_MODELS)} (or pass a model folder)")
    cache = Path(manager.output_prefix) / name.replace("/", "--")
    try:
        checkpoint, _, _ = manager.download_model(name)
    except Exception as err:  # requests, zip and OS errors alike: the model is not on this machine
        raise ModelFolderError(
            f"could not download the coqui-tts model {name} ({type(err).__name__}: {err}). Without network, "
            f"download it on a connected machine (python -c \"from TTS.utils.manage import ModelManager; "
            f"ModelManager().download_model('{name}')\" puts it in {cache}), copy that folder here and pass "
            "its path instead of the name") from None
    if name.startswith("tts_models/") and name not in SUPPORTED_MODELS:
        log.warning("%s is not one of the zoo models this toolkit is tested with (%s); loading it by its "
                    "architecture", name, ", ".join(SUPPORTED_MODELS))
    return Path(checkpoint).parent


def is_zoo_folder(folder: Path) -> bool:
    """A coqui folder (config and/or checkpoint) that is not one of the toolkit's own model folders."""
    if (folder / META_FILE).is_file() or (folder / SPEAKERS_FILE).is_file():
        return False
    return (folder / CONFIG_FILE).is_file() or any((folder / n).is_file() for n in CHECKPOINT_NAMES)


def find_checkpoint(folder: Path) -> Path:
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise ModelFolderError(f"{folder}: missing the model checkpoint (a coqui-tts model folder holds {CONFIG_FILE} "
                           f"and one of {', '.join(CHECKPOINT_NAMES[:3])})")


def load_zoo_config(folder: Path):
    """coqui's config of a zoo folder, its file paths pointed at the folder's own files."""
    from TTS.config import load_config

    if not (folder / CONFIG_FILE).is_file():
        raise ModelFolderError(f"{folder}: missing {CONFIG_FILE} (a coqui-tts model folder holds {CONFIG_FILE} "
                               f"and one of {', '.join(CHECKPOINT_NAMES[:3])})")
    config = load_config(str(folder / CONFIG_FILE))
    for field_name, defaults in PATH_FIELDS.items():
        for owner in _field_owners(config, field_name):
            attr = field_name.split(".")[-1]
            current = owner.get(attr) if hasattr(owner, "get") else getattr(owner, attr, None)
            if isinstance(current, list):
                current = current[0] if current else None
            candidates = ([Path(current).name] if current else []) + list(defaults)
            local = next((folder / c for c in candidates if (folder / c).is_file()), None)
            if local is not None:
                setattr(owner, attr, str(local))
    return config


def _field_owners(config, field_name: str) -> list:
    """The config objects holding ``field_name`` (the config itself and its ``model_args``)."""
    if field_name.startswith("audio."):
        return [config.audio]
    owners = [config] if hasattr(config, field_name) else []
    model_args = getattr(config, "model_args", None)
    if model_args is not None and hasattr(model_args, field_name):
        owners.append(model_args)
    return owners


def require_files(folder: Path, config) -> None:
    """Refuse a folder missing a file its config needs, naming the file."""
    from TTS.config import get_from_config_or_model_args as get

    needs = []
    if get(config, "use_speaker_embedding") and not config.get("speakers"):
        needs.append(("speakers_file", "the speaker-ID table"))
    if get(config, "use_d_vector_file"):
        needs.append(("d_vector_file", "the speakers' d-vectors"))
    if get(config, "use_language_embedding"):
        needs.append(("language_ids_file", "the language IDs"))
    if get(config, "speaker_encoder_model_path"):
        needs += [("speaker_encoder_model_path", "the speaker encoder"),
                  ("speaker_encoder_config_path", "the speaker encoder's config")]
    for field_name, what in needs:
        value = get(config, field_name)
        if isinstance(value, list):
            value = value[0] if value else None
        if not value or not Path(value).is_file():
            names = " or ".join(PATH_FIELDS[field_name])
            raise ModelFolderError(f"{folder}: missing {names} ({what}, needed by its {CONFIG_FILE})")


def zoo_backend_class(folder: Path, config) -> type:
    """The registered zoo backend that accepts this coqui config (:mod:`tts_adapt.models.backends` has
    registered the built-in ones)."""
    for cls in BACKENDS.values():
        if isinstance(cls, type) and issubclass(cls, ZooBackend) and cls.accepts(config):
            return cls
    raise ModelFolderError(
        f"{folder}: a coqui-tts {config.get('model')!r} model this toolkit cannot adapt; supported zoo "
        f"architectures: {', '.join(f'{n} ({b})' for n, b in SUPPORTED_MODELS.items())}")


def load_zoo_folder(folder: Path):
    """Load a downloaded zoo model folder into its backend (eval mode)."""
    config = load_zoo_config(folder)
    checkpoint = find_checkpoint(folder)
    require_files(folder, config)
    return zoo_backend_class(folder, config).from_zoo(folder, config, checkpoint)


def load_coqui_weights(model: torch.nn.Module, checkpoint: Path, config_path: Path) -> None:
    """A coqui checkpoint (``{"model": state_dict, ...}``) into ``model``, read with ``weights_only`` (tensors
    and plain containers: a checkpoint from elsewhere cannot run code).

    The speaker encoder's weights live in their own file (coqui drops them from the model's state
    too), and a discriminator the model was built without is left out.
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated download, a file that is not a checkpoint, or one that would run code
        raise ModelFolderError(f"{checkpoint}: cannot be read as a coqui-tts checkpoint ({err})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ModelFolderError(f"{checkpoint}: not a coqui-tts checkpoint (no 'model' state dict)")
    has_disc = hasattr(model, "disc")
    weights = {k: v for k, v in state["model"].items()
               if not k.startswith("speaker_encoder.") and (has_disc or not k.startswith("disc."))}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ModelFolderError(f"{checkpoint} does not match {config_path}: {str(err).splitlines()[0]}") from None


def audio_config_of(config) -> AudioConfig:
    """The toolkit's audio config for a coqui audio config (rate and STFT/mel settings)."""
    a = config.audio
    return AudioConfig(sample_rate=int(a.sample_rate), n_fft=int(a.fft_size), win_length=int(a.win_length),
                       hop_length=int(a.hop_length), n_mels=int(a.num_mels), mel_fmin=float(a.mel_fmin or 0.0),
                       mel_fmax=None if a.mel_fmax is None else float(a.mel_fmax))


def id_table_of(model, folder: Path) -> SpeakerTable:
    """The speaker-ID table of a coqui model, names in the order of their IDs (rows of ``emb_g``)."""
    manager = getattr(model, "speaker_manager", None)
    name_to_id = dict(manager.name_to_id) if manager is not None else {}
    if not name_to_id:
        raise ModelFolderError(f"{folder}: the model uses a speaker-ID table but has no speaker names")
    names = sorted(name_to_id, key=name_to_id.get)
    if [name_to_id[n] for n in names] != list(range(len(names))):
        raise ModelFolderError(f"{folder}: speaker IDs are not 0..{len(names) - 1}; cannot map names to rows")
    rows = model.emb_g.weight.shape[0]
    if rows != len(names):
        raise ModelFolderError(f"{folder}: {len(names)} speaker names for {rows} rows of the speaker table")
    return SpeakerTable("id_table", names)


def identity_stats(n_mels: int, f0_mean: float = 0.0, f0_std: float = 1.0) -> FeatureStats:
    """Statistics that leave the features as coqui computes them (a zoo model normalises its own)."""
    return FeatureStats(torch.zeros(n_mels), torch.ones(n_mels), f0_mean, f0_std)


#: How a zoo model is conditioned on a voice, and how a new voice gets into it (recorded in ``backend.info``).
CONDITIONING_NOTES = {
    "id_table": "speaker-ID table; a new voice is a new row, started at the mean of the known rows and trained "
                "with the adapter",
    "d_vector": "d-vectors of the model's own speaker encoder; a new voice is the mean d-vector of its clips",
}


class ZooBackend:
    """What a backend over a coqui-tts zoo model adds: recognising its config and loading its folder.

    Mixed into a :class:`~tts_adapt.models.coqui.CoquiBackend`. A zoo model stays in its own
    folder: what adaptation changes is saved as an adapter, so :meth:`save_pretrained` refuses.
    """

    #: coqui config ``model`` values this backend loads
    architectures: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def accepts(cls, config) -> bool:
        return config.get("model") in cls.architectures

    @classmethod
    def prepare_config(cls, config):
        """Adjust the config before the model is built (nothing by default)."""
        return config

    @classmethod
    def from_zoo(cls, folder: Path, config, checkpoint: Path):
        config = cls.prepare_config(config)
        model = cls.model_class()(config)
        load_coqui_weights(model, checkpoint, folder / CONFIG_FILE)
        model.eval()
        speakers = cls.zoo_speakers(model, folder)
        backend = cls(model, audio_config_of(config), cls.zoo_stats(folder, config), speakers,
                      {"zoo_folder": str(folder), "checkpoint": checkpoint.name,
                       "conditioning": CONDITIONING_NOTES[speakers.kind]})
        backend.after_load()
        return backend

    @classmethod
    def create(cls, audio=None, stats=None, speakers=None, *, config=None, **_):
        """A new, randomly initialised model of a coqui ``config`` of this architecture (speaker files
        as the config names them)."""
        if config is None:
            raise ValueError(f"a new {cls.name} model needs its coqui config (config=...)")
        config = cls.prepare_config(config)
        model = cls.model_class()(config)
        model.eval()
        backend = cls(model, audio_config_of(config), cls.zoo_stats(None, config), cls.zoo_speakers(model, None), {})
        backend.after_load()
        return backend

    @classmethod
    def zoo_stats(cls, folder: Path | None, config) -> FeatureStats:
        return identity_stats(int(config.audio.num_mels))

    @classmethod
    def zoo_speakers(cls, model, folder: Path | None) -> SpeakerTable:
        return id_table_of(model, folder or Path("."))

    def after_load(self) -> None:
        """Settings for adapting a pretrained model (nothing by default)."""

    def save_pretrained(self, folder, *, step=None) -> None:
        raise ModelFolderError(f"a {self.name} zoo model is used from its own folder ({self.info.get('zoo_folder')}); "
                               "what adaptation changes is saved as an adapter (tts-adapt adapt --out DIR)")
