"""A target speaker's recordings from a dataset, split into adaptation clips and disjoint held-out clips.

(Named for the split it makes; reading the clips of a target folder for adaptation is
:mod:`tts_adapt.adapt.clips`.)

``prepare_target`` writes two folders in the custom layout (``*.wav`` + same-named
``*.txt``), as a user would bring their own recordings:

* ``<out>/clips``: the clips to adapt on (``tts-adapt adapt --target-dir``);
* ``<out>/heldout``: other sentences of the same speaker, never seen in adaptation,
  on which ``tts-adapt evaluate`` measures learning;

plus ``<out>/target.json`` recording the speaker, the dataset and both folders.

Which utterances are held out: in the embedded corpus, its own ``heldout`` split
(sentences that every speaker reads, so the same sentences serve all speakers);
in other datasets, which have no split, a seeded shuffle of the speaker's
utterances (sorted by id) puts the first ``heldout`` ones aside.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tts_adapt.data.samples import Utterance
from tts_adapt.settings import check_fields

TARGET_INFO = "target.json"


@dataclass(frozen=True)
class TargetConfig:
    """Which speaker of a dataset is cloned, from how many clips (``tts-adapt prepare-target``)."""

    speaker: str = field(default="", metadata={"help": "Dataset speaker to clone, e.g. p248 (the embedded "
                                                        "corpus: by default its flite slt target speaker; pi00joe "
                                                        "for its natural target)."})
    clips: int = field(default=20, metadata={"range": ">= 1", "help": "Adaptation clips."})
    heldout: int = field(default=8, metadata={"range": ">= 1", "help": "Held-out clips (learning is measured on them)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split (datasets without one)."})

    def __post_init__(self):
        check_fields(self)
        object.__setattr__(self, "speaker", str(self.speaker))  # YAML reads LibriTTS's 1089 as a number
        for name in ("clips", "heldout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class PreparedTarget:
    speaker: str
    clips_dir: Path
    heldout_dir: Path
    clips: int
    heldout: int
    data: Path | None = None  # the dataset the clips were taken from, and its layout
    layout: str = "auto"

    @classmethod
    def load(cls, folder: str | Path) -> "PreparedTarget":
        """The target folder written by :func:`prepare_target` (``folder`` holds target.json)."""
        path = Path(folder) / TARGET_INFO
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return cls(info["speaker"], Path(info["clips_dir"]), Path(info["heldout_dir"]), int(info["clips"]),
                       int(info["heldout"]), Path(info["data"]) if info.get("data") else None,
                       info.get("layout", "auto"))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: not a target folder written by tts-adapt prepare-target ({err})") from err


def find_prepared_target(clips_dir: str | Path) -> PreparedTarget | None:
    """The prepared target whose adaptation clips are ``clips_dir``, if it was made by :func:`prepare_target`."""
    parent = Path(clips_dir).resolve().parent
    if not (parent / TARGET_INFO).is_file():
        return None
    target = PreparedTarget.load(parent)
    return target if target.clips_dir.resolve() == Path(clips_dir).resolve() else None


def split_speaker(utts: list[Utterance], speaker: str, clips: int, heldout: int, seed: int = 0
                  ) -> tuple[list[Utterance], list[Utterance]]:
    """(adaptation clips, held-out clips) of ``speaker``; see the module docstring for the rule."""
    mine = sorted((u for u in utts if u.speaker == speaker), key=lambda u: (u.utt_id, u.audio_path))
    if not mine:
        speakers = sorted({u.speaker for u in utts})
        shown = ", ".join(speakers[:20]) + (" ..." if len(speakers) > 20 else "")
        raise ValueError(f"speaker {speaker!r} is not in the dataset; its speakers are: {shown}")
    if any("/" in (u.split or "") for u in mine):  # the embedded corpus: its own split ("pretrain/heldout")
        train = [u for u in mine if not (u.split or "").endswith("heldout")]
        held = [u for u in mine if (u.split or "").endswith("heldout")]
    else:
        order = list(range(len(mine)))
        random.Random(seed).shuffle(order)
        held = [mine[i] for i in sorted(order[:heldout])]
        train = [mine[i] for i in sorted(order[heldout:])]
    train, held = train[:clips], held[:heldout]
    if len(train) < clips or len(held) < 1:
        raise ValueError(f"speaker {speaker!r} has {len(mine)} usable utterances: {len(train)} for adaptation "
                         f"(asked for {clips}) and {len(held)} held out (asked for {heldout})")
    return train, held


def _write_clips(utts: list[Utterance], folder: Path, sample_rate: int | None) -> None:
    # imported on use, as below: the CLI reads TargetConfig from this module at start-up
    import numpy as np

    from tts_adapt.data.audio import load_audio, save_audio

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {u.utt_id or Path(u.audio_path).stem for u in utts}
    for old in list(folder.glob("*.wav")) + list(folder.glob("*.txt")):  # left by an earlier selection
        if old.stem not in wanted:
            old.unlink()
    for u in utts:
        stem = u.utt_id or Path(u.audio_path).stem
        wav = folder / f"{stem}.wav"
        if not wav.is_file():
            src = Path(u.audio_path)
            if src.suffix.lower() == ".wav" and sample_rate is None:
                shutil.copyfile(src, wav)
            else:  # flac and friends, or a resample: decode and write 16-bit wav
                import soundfile as sf

                sr = sample_rate or sf.info(str(src)).samplerate
                audio, _ = load_audio(src, sr)
                save_audio(wav, np.asarray(audio), sr)
        (folder / f"{stem}.txt").write_text(u.text + "\n", encoding="utf-8")


def _refuse_low_rates(utts: list[Utterance], sample_rate: int) -> None:
    """The rule tts-adapt adapt and the demo apply (:func:`~tts_adapt.data.validation.low_sample_rate`)."""
    import soundfile as sf

    from tts_adapt.data.audio import AudioError
    from tts_adapt.data.validation import low_sample_rate

    for u in utts:
        too_low = low_sample_rate(sf.info(u.audio_path).samplerate, sample_rate)
        if too_low:
            raise AudioError(u.audio_path, too_low, "sample rate too low")


def prepare_target(data: str | Path, speaker: str, out: str | Path, *, clips: int = 20, heldout: int = 8,
                   layout: str = "auto", seed: int = 0, sample_rate: int | None = None,
                   utterances: list[Utterance] | None = None) -> PreparedTarget:
    """Write ``speaker``'s adaptation and held-out clips of dataset ``data`` into ``out`` (idempotent).

    ``utterances`` skips reading the dataset again when the caller has it.
    ``sample_rate`` resamples (default: keep wav files as they are, decode others at their own rate); a
    clip below it is refused (:func:`~tts_adapt.data.validation.low_sample_rate`), naming the file.
    """
    # imported on use: the CLI reads TargetConfig from this module at start-up
    from tts_adapt.data.readers import read_dataset
    from tts_adapt.io import write_json_atomic

    out = Path(out)
    if utterances is None:
        utterances, _ = read_dataset(data, layout, validate_audio=False)
    train, held = split_speaker(utterances, speaker, clips, heldout, seed)
    if sample_rate is not None:  # before anything is written
        _refuse_low_rates(train + held, sample_rate)
    clips_dir, heldout_dir = out / "clips", out / "heldout"
    _write_clips(train, clips_dir, sample_rate)
    _write_clips(held, heldout_dir, sample_rate)
    write_json_atomic(out / TARGET_INFO, {
        "speaker": speaker, "data": str(Path(data).resolve()), "layout": layout, "seed": seed,
        "clips_dir": str(clips_dir.resolve()), "heldout_dir": str(heldout_dir.resolve()),
        "clips": len(train), "heldout": len(held),
    })
    return PreparedTarget(speaker, clips_dir.resolve(), heldout_dir.resolve(), len(train), len(held),
                          Path(data).resolve(), layout)
