"""Training features of utterances: log-mel, frame-level F0 and token ids, cached on disk.

What is computed from the audio is the backend's choice: by default a natural-log mel
(torchaudio, the toolkit's :class:`AudioConfig`) and F0 by the config's tracker (RAPT by default); a backend whose model was
trained on other features (a coqui-tts zoo model) gives a :class:`FeatureExtractor` that
computes them with coqui's own code, and may add model-specific tensors (``extras``, e.g.
the waveform VITS computes its linear spectrogram from). The extractor's description is
part of the cache fingerprint.

Extraction runs once per dataset and configuration; the result is a few
safetensors shards (``features-<fingerprint>/shard-NNNNN.safetensors``) that
later runs load in seconds. Shards are written atomically, so an interrupted
extraction resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tts_adapt.data.audio import AudioConfig, AudioError, LogMel, load_audio
from tts_adapt.data.samples import InputReport, Utterance
from tts_adapt.io import atomic_path, write_json_atomic
from tts_adapt.parallel import process_pool

log = logging.getLogger(__name__)

#: Search range of the F0 trackers, Hz (the corpus's lowest voices are near 53 Hz).
F0_MIN, F0_MAX = 40.0, 600.0
#: SWIPE's floor in the models made with it (kept so their features stay the same).
SWIPE_MIN = 50.0
SHARD_SIZE = 256


def extract_f0(wav: np.ndarray, config: AudioConfig, num_frames: int) -> np.ndarray:
    """F0 in Hz per mel frame ``(num_frames,)``, 0 where unvoiced, by ``config.f0_method`` (pysptk).

    ``rapt`` (the default) tracks the low voices that SWIPE' (``swipe``, of models made before the
    setting) puts one to three octaves too high. RAPT's voicing decision depends on the level, so
    the signal is peak-normalised to the 16-bit range it expects.
    """
    import pysptk

    if config.f0_method == "rapt":
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        x = (wav * (0.9 * 32767 / peak) if peak > 0 else wav).astype(np.float32)
        f0 = pysptk.rapt(x, fs=config.sample_rate, hopsize=config.hop_length, min=F0_MIN, max=F0_MAX, otype="f0")
    else:
        f0 = pysptk.swipe(wav.astype(np.float64), fs=config.sample_rate, hopsize=config.hop_length,
                          min=SWIPE_MIN, max=F0_MAX, threshold=0.3, otype="f0")
    out = np.zeros(num_frames, dtype=np.float32)
    n = min(num_frames, len(f0))
    out[:n] = f0[:n]
    return out


@dataclass
class UtteranceFeatures:
    """Features of one utterance: ``mel`` (frames, n_mels) log-mel in the model's own scale (natural log
    for the toolkit's models), ``f0`` (frames,) Hz, ``tokens`` (T,); ``extras`` model-specific tensors whose
    first axis is time (padded by :meth:`TTSBackend.collate`)."""

    utt_id: str
    speaker: str
    mel: torch.Tensor
    f0: torch.Tensor
    tokens: torch.Tensor
    text: str
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class FeatureExtractor:
    """Audio features of one file: ``(mel (frames, n_mels), f0 (frames,) Hz, extras)``.

    Must be picklable (extraction may run in worker processes); :meth:`describe` identifies
    it in the cache fingerprint. This default is the toolkit's own: natural-log mel from
    torchaudio and F0 from :func:`extract_f0`, at the :class:`AudioConfig`'s rate.
    """

    def __init__(self, config: AudioConfig):
        self.config = config
        self._log_mel: LogMel | None = None

    def describe(self) -> dict | None:
        """What identifies the features beyond the audio config (None: the toolkit's defaults)."""
        return None

    def __call__(self, audio_path: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if self._log_mel is None:
            self._log_mel = LogMel(self.config)
        wav, _ = load_audio(audio_path, self.config.sample_rate)
        mel = self._log_mel(torch.from_numpy(wav)).T.contiguous()  # (frames, n_mels)
        f0 = extract_f0(wav, self.config, mel.shape[0])
        return mel, torch.from_numpy(f0), {}

    def __getstate__(self):
        return {"config": self.config, "_log_mel": None}


def _extract_shard(utts: list[Utterance], extractor: FeatureExtractor, text_to_ids, path: Path
                   ) -> list[tuple[str, str]]:
    """Extract and write one shard; returns (audio path, reason) of utterances that failed."""
    tensors: dict[str, torch.Tensor] = {}
    meta = []
    failed = []
    for u in utts:
        try:
            tokens = torch.tensor(text_to_ids(u.text), dtype=torch.int32)
            if len(tokens) == 0:
                failed.append((u.audio_path, "text gives no tokens"))
                continue
            mel, f0, extras = extractor(u.audio_path)
        except (AudioError, ValueError, RuntimeError) as err:
            failed.append((u.audio_path, str(err)))
            continue
        k = len(meta)
        tensors[f"{k}.mel"], tensors[f"{k}.f0"], tensors[f"{k}.tokens"] = mel.to(torch.float16), f0, tokens
        for name, t in extras.items():
            tensors[f"{k}.x.{name}"] = t.contiguous()
        meta.append({"utt_id": u.utt_id or Path(u.audio_path).stem, "speaker": u.speaker, "text": u.text,
                     "extras": sorted(extras)})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"utterances": json.dumps(meta), "failed": json.dumps(failed)})
    return failed


def fingerprint(utts: Sequence[Utterance], config: AudioConfig, text_config: dict,
                extractor: FeatureExtractor | None = None) -> str:
    h = hashlib.sha256()
    described = extractor.describe() if extractor is not None else None
    audio = config.to_dict()
    if audio["f0_method"] == "swipe":  # caches written before the setting existed stay valid
        del audio["f0_method"]
    h.update(json.dumps([audio, text_config] + ([described] if described else []), sort_keys=True).encode())
    for u in utts:
        h.update(f"{u.audio_path}|{u.speaker}|{u.text}\n".encode())
    return h.hexdigest()[:16]


def extract_features(
    utts: Sequence[Utterance], cache_dir: str | Path, config: AudioConfig, text_to_ids: Callable[[str], list[int]],
    text_config: dict, *, report: InputReport | None = None, workers: int = 1, progress: bool = True,
    lazy: bool = False, extractor: FeatureExtractor | None = None,
) -> "list[UtteranceFeatures] | FeatureStore":
    """Features of ``utts`` (in order, failures left out and reported), from the cache when present.

    ``text_to_ids`` must be picklable when ``workers > 1``; ``text_config``
    identifies the text front end in the cache fingerprint. ``extractor`` computes the
    audio features (default: :class:`FeatureExtractor` of ``config``). ``lazy`` returns a
    :class:`FeatureStore` that reads each utterance from disk when it is used.
    """
    fp = fingerprint(utts, config, text_config, extractor)
    extractor = extractor or FeatureExtractor(config)
    folder = Path(cache_dir) / f"features-{fp}"
    folder.mkdir(parents=True, exist_ok=True)
    shards = [list(utts[i:i + SHARD_SIZE]) for i in range(0, len(utts), SHARD_SIZE)]
    paths = [folder / f"shard-{i:05d}.safetensors" for i in range(len(shards))]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        bar = tqdm(total=sum(len(shards[i]) for i in todo), desc="extracting features", unit="utt",
                   disable=not progress)
        if workers > 1 and len(todo) > 1:
            with process_pool(workers) as pool:
                futures = {pool.submit(_extract_shard, shards[i], extractor, text_to_ids, paths[i]): i for i in todo}
                for fut in futures:
                    fut.result()
                    bar.update(len(shards[futures[fut]]))
        else:
            for i in todo:
                _extract_shard(shards[i], extractor, text_to_ids, paths[i])
                bar.update(len(shards[i]))
        bar.close()
        write_json_atomic(folder / "info.json", {"audio": config.to_dict(), "text": text_config,
                                                 "features": extractor.describe(), "utterances": len(utts)})
    if lazy:
        return FeatureStore(paths, report)
    features = []
    for p in paths:
        features += load_shard(p, report)
    return features


class FeatureStore(Sequence):
    """Features read from the shards one utterance at a time (memory independent of their number).

    ``num_frames`` / ``num_tokens`` / ``utt_ids`` / ``speakers`` are known without loading a tensor.
    """

    def __init__(self, paths: Sequence[Path], report: InputReport | None = None):
        from safetensors import safe_open

        self._index: list[tuple[Path, int, list[str]]] = []
        self.utt_ids, self.speakers, self.texts, self.num_frames, self.num_tokens = [], [], [], [], []
        for p in paths:
            with safe_open(str(p), "pt") as fh:
                meta = fh.metadata()
                for k, m in enumerate(json.loads(meta["utterances"])):
                    self._index.append((p, k, m.get("extras", [])))
                    self.utt_ids.append(m["utt_id"])
                    self.speakers.append(m["speaker"])
                    self.texts.append(m["text"])
                    self.num_frames.append(fh.get_slice(f"{k}.mel").get_shape()[0])
                    self.num_tokens.append(fh.get_slice(f"{k}.tokens").get_shape()[0])
            for audio_path, reason in json.loads(meta.get("failed", "[]")):
                if report is not None:
                    report.bad(audio_path, reason, "feature extraction failed")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from safetensors import safe_open

        path, k, extra_names = self._index[i]
        with safe_open(str(path), "pt") as fh:
            mel, f0, tokens = (fh.get_tensor(f"{k}.{name}") for name in ("mel", "f0", "tokens"))
            extras = {name: fh.get_tensor(f"{k}.x.{name}") for name in extra_names}
        return UtteranceFeatures(self.utt_ids[i], self.speakers[i], mel.float(), f0, tokens.long(), self.texts[i],
                                 extras)


def load_shard(path: Path, report: InputReport | None = None) -> list[UtteranceFeatures]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    out = []
    for k, m in enumerate(json.loads(meta["utterances"])):
        out.append(UtteranceFeatures(m["utt_id"], m["speaker"], tensors[f"{k}.mel"].float(), tensors[f"{k}.f0"],
                                     tensors[f"{k}.tokens"].long(), m["text"],
                                     {name: tensors[f"{k}.x.{name}"] for name in m.get("extras", [])}))
    for audio_path, reason in json.loads(meta.get("failed", "[]")):
        if report is not None:
            report.bad(audio_path, reason, "feature extraction failed")
    return out


@dataclass
class FeatureStats:
    """Normalisation statistics: per-channel mel mean/std ``(n_mels,)`` and voiced-F0 mean/std (Hz)."""

    mel_mean: torch.Tensor
    mel_std: torch.Tensor
    f0_mean: float
    f0_std: float

    @classmethod
    def compute(cls, features: Sequence[UtteranceFeatures]) -> "FeatureStats":
        mels = torch.cat([f.mel for f in features])
        f0 = torch.cat([f.f0 for f in features])
        voiced = f0[f0 > 0]
        return cls(mels.mean(0), mels.std(0).clamp_min(1e-3), float(voiced.mean()), float(voiced.std()))

    def normalize_mel(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.mel_mean) / self.mel_std

    def denormalize_mel(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.mel_std + self.mel_mean

    def normalize_f0(self, f0: torch.Tensor) -> torch.Tensor:
        """Voiced frames to z-scores; unvoiced frames stay 0 (coqui's FastPitch convention)."""
        return torch.where(f0 > 0, (f0 - self.f0_mean) / self.f0_std, torch.zeros_like(f0))

    def to_dict(self) -> dict:
        return {"mel_mean": self.mel_mean.tolist(), "mel_std": self.mel_std.tolist(),
                "f0_mean": self.f0_mean, "f0_std": self.f0_std}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureStats":
        return cls(torch.tensor(d["mel_mean"]), torch.tensor(d["mel_std"]), float(d["f0_mean"]), float(d["f0_std"]))
