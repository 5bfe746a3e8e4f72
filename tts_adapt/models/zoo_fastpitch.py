"""A coqui-tts zoo FastPitch (``tts_models/en/vctk/fast_pitch``: ``ForwardTTS``, speaker-ID table)."""

from __future__ import annotations

import io
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from tts_adapt.models.base import ModelFolderError, register_backend
from tts_adapt.models.fastpitch import FastPitchBackend
from tts_adapt.models.features import FeatureExtractor, FeatureStats
from tts_adapt.models.zoo import ZooBackend, identity_stats

log = logging.getLogger(__name__)

#: coqui's F0 statistics file (written by its F0Dataset next to the cached pitch of the training data)
PITCH_STATS_FILE = "pitch_stats.npy"
#: Used when a zoo folder has no pitch_stats.npy: mean and spread of voiced F0 over a mixed-gender
#: English corpus; the pitch predictor's targets are then shifted by the difference to the real ones.
FALLBACK_F0_MEAN, FALLBACK_F0_STD = 150.0, 55.0


#: What a pickled numpy array of numbers may name: numpy's array rebuilding and its number types, nothing
#: that runs code (a model folder from elsewhere is untrusted).
NUMPY_PICKLE_GLOBALS = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", np._core.multiarray._reconstruct), ("scalar", np._core.multiarray.scalar))
} | {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in NUMPY_PICKLE_GLOBALS:
            return NUMPY_PICKLE_GLOBALS[(module, name)]
        if module in ("numpy", "numpy.dtypes") and name.endswith("DType"):  # numpy 2's dtype classes
            return getattr(np.dtypes, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which could run code")


def read_pitch_stats(path: Path) -> tuple[float, float]:
    """(mean, std) of F0 in Hz from coqui's ``pitch_stats.npy``, loaded without running code.

    coqui saves a dict ``{"mean": ..., "std": ...}`` with ``np.save``, which pickles it; an ``np.load`` with
    ``allow_pickle=True`` would run whatever a file from elsewhere asks. Plain numeric files are read
    without pickle; an object array is unpickled allowing numpy's own array and number types only.
    Anything else is a :class:`ModelFolderError` naming the file.
    """
    def refuse(reason: str):
        return ModelFolderError(f"{path}: not coqui's F0 statistics ({reason}); delete it to use the generic "
                                f"ones (mean {FALLBACK_F0_MEAN:.0f} Hz, std {FALLBACK_F0_STD:.0f} Hz)")

    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            if dtype.hasobject:
                value = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
            else:
                f.seek(0)
                value = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as err:
        raise refuse(f"unreadable: {err}") from None
    if isinstance(value, np.ndarray) and value.dtype.hasobject and value.shape == ():
        value = value.item()
    if isinstance(value, dict) and {"mean", "std"} <= value.keys():
        numbers = [value["mean"], value["std"]]
    elif isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.size == 2:
        numbers = list(value.ravel())
    else:
        raise refuse("expected a dict with 'mean' and 'std', or two numbers")
    try:
        mean, std = (float(np.asarray(n, dtype=np.float64)) for n in numbers)
    except (TypeError, ValueError):
        raise refuse("'mean' and 'std' are not numbers") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise refuse(f"mean {mean} and std {std} must be finite, std above 0")
    return mean, std


class CoquiAudioFeatures(FeatureExtractor):
    """Features exactly as coqui computes them for a model trained with its ``AudioProcessor``: the audio
    read by ``ap.load_wav`` (resampled to the model's rate, trimmed and normalised as its config says),
    the normalised dB mel of ``ap.melspectrogram`` and the F0 of ``ap.compute_f0`` (Hz, 0 unvoiced),
    cut or zero-padded to the mel's frames (coqui pads F0 to the mel length in its batches)."""

    def __init__(self, coqui_audio: dict):
        self.coqui_audio = dict(coqui_audio)
        self._ap = None

    def describe(self) -> dict:
        return {"coqui_audio_processor": self.coqui_audio}

    def processor(self):
        if self._ap is None:
            from TTS.config.shared_configs import BaseAudioConfig
            from TTS.utils.audio import AudioProcessor

            config = BaseAudioConfig()
            config.from_dict(self.coqui_audio)
            self._ap = AudioProcessor(config)
        return self._ap

    def __call__(self, audio_path: str):
        ap = self.processor()
        try:
            wav = ap.load_wav(audio_path, sr=ap.sample_rate)
        except Exception as err:  # librosa/soundfile errors on unreadable files
            raise ValueError(f"cannot read {audio_path}: {err}") from None
        mel = torch.from_numpy(ap.melspectrogram(wav)).T.contiguous()  # (frames, n_mels)
        f0 = np.zeros(mel.shape[0], dtype=np.float32)
        raw = np.nan_to_num(ap.compute_f0(wav).astype(np.float32))
        n = min(len(raw), len(f0))
        f0[:n] = raw[:n]
        return mel, torch.from_numpy(f0), {}

    def __getstate__(self):
        return {"coqui_audio": self.coqui_audio, "_ap": None}


@register_backend
class CoquiFastPitchBackend(ZooBackend, FastPitchBackend):
    """A pretrained coqui FastPitch with its speaker-ID table.

    Features are coqui's (:class:`CoquiAudioFeatures`); the model's output mel is in coqui's
    normalised dB scale and is turned into a natural-log mel for the toolkit's vocoders. LoRA
    targets are those of the toolkit's FastPitch (everything but the aligner, dilated or grouped
    convolutions left out). The F0 normalisation the pitch predictor was trained with is coqui's
    ``pitch_stats.npy`` of the training data, which the zoo does not ship: put it in the model
    folder to use it; otherwise a generic mean/std is used, with a warning.
    """

    name = "coqui_fastpitch"
    architectures = ("fast_pitch",)

    @classmethod
    def accepts(cls, config) -> bool:
        from TTS.config import get_from_config_or_model_args as get

        return super().accepts(config) and not get(config, "use_d_vector_file")

    @classmethod
    def zoo_stats(cls, folder: Path | None, config) -> FeatureStats:
        n_mels = int(config.audio.num_mels)
        path = folder / PITCH_STATS_FILE if folder is not None else None
        if path is not None and path.is_file():
            return identity_stats(n_mels, *read_pitch_stats(path))
        if folder is not None:
            log.warning("%s has no %s (coqui's F0 statistics of the training data); normalising F0 with "
                        "mean %.0f Hz and std %.0f Hz instead", folder, PITCH_STATS_FILE, FALLBACK_F0_MEAN,
                        FALLBACK_F0_STD)
        return identity_stats(n_mels, FALLBACK_F0_MEAN, FALLBACK_F0_STD)

    @classmethod
    def prepare_config(cls, config):
        from TTS.config import get_from_config_or_model_args as get

        if get(config, "use_energy"):
            raise ValueError("FastPitch models with an energy predictor are not supported (no energy features)")
        return config

    def after_load(self) -> None:
        self.model.binary_loss_weight = 1.0  # a trained aligner: the full binary alignment loss from the start

    def set_training_progress(self, step: int) -> None:
        """The model is trained: no warm-up of the alignment loss."""

    def feature_extractor(self) -> CoquiAudioFeatures:
        return CoquiAudioFeatures(self.config.audio.to_dict())

    @property
    def text_config(self) -> dict:
        return {**super().text_config, "coqui_model": self.name}

    def to_log_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """coqui's normalised dB mel ``(frames, n_mels)`` back to natural-log magnitudes."""
        ap = CoquiAudioFeatures(self.config.audio.to_dict()).processor()
        db = ap.denormalize(mel.detach().cpu().numpy().T) if ap.signal_norm else mel.detach().cpu().numpy().T
        log_mel = torch.from_numpy(np.asarray(db, dtype=np.float32)).T
        if ap.do_amp_to_db_mel:  # dB = gain · log_base(magnitude)
            log_mel = log_mel / ap.spec_gain * float(np.log(ap.base))
        return log_mel.clamp_min(float(np.log(self.audio.log_floor)))
