"""Clips uploaded (or recorded) in the demo: matching transcripts, checking every clip, and writing the
usable set as a target folder for :func:`tts_adapt.adapt.train.adapt`.

Transcripts come from, in order of precedence: the table typed in the page, a ``.txt`` file uploaded
with the same name stem as the clip, or an uploaded ``metadata.csv`` (``file|text`` or
``file|speaker|text``, as the custom dataset layout). Every problem names the clip and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from tts_adapt.data.audio import load_audio, save_audio
from tts_adapt.data.samples import InputReport, Utterance
from tts_adapt.data.validation import AudioChecks, check_audio, check_text

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
TEXT_SUFFIXES = (".txt", ".csv")
MAX_FILE_MB = 20
MIN_SECONDS, MAX_SECONDS = 0.5, 20.0  # as tts-adapt adapt reads a target folder
MAX_CHANNELS = 2
METADATA_HEADERS = {"file", "filename", "file_name", "path", "audio", "audio_file", "audio_path", "wav", "id"}


class UploadError(ValueError):
    """Uploaded clips that cannot be used; the message lists each clip with its reason."""


@dataclass(frozen=True)
class Clip:
    name: str  # as the user knows it: the uploaded file's name, or "recording N"
    path: Path
    text: str


def _stem(name: str) -> str:
    return Path(name).stem


def transcripts_from_files(paths: list[str | Path]) -> dict[str, str]:
    """Transcripts by clip name stem, from uploaded ``.txt`` files and ``metadata.csv`` rows."""
    found: dict[str, str] = {}
    for p in map(Path, paths):
        if p.suffix.lower() == ".csv":
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            for i, line in enumerate(lines):
                cols = line.split("|")
                if len(cols) not in (2, 3):
                    raise UploadError(f"{p.name} line {i + 1}: expected 'file|text' or 'file|speaker|text'")
                if i == 0 and cols[0].strip().lower() in METADATA_HEADERS:
                    continue
                found.setdefault(_stem(cols[0].strip()), cols[-1].strip())
    for p in map(Path, paths):  # a clip's own .txt file wins over metadata.csv
        if p.suffix.lower() == ".txt":
            found[p.stem] = p.read_text(encoding="utf-8", errors="replace").strip()
    return found


def transcript_rows(paths: list[str | Path]) -> list[list[str]]:
    """``[[clip name, transcript], ...]`` for every uploaded audio file (transcript empty when unknown)."""
    texts = transcripts_from_files(paths)
    return [[Path(p).name, texts.get(Path(p).stem, "")] for p in paths if Path(p).suffix.lower() in AUDIO_SUFFIXES]


def clips_from_upload(paths: list[str | Path], rows: list[list] | None = None,
                      recordings: list[tuple[str, str]] | None = None) -> list[Clip]:
    """Uploaded audio files with their transcripts (table rows ``[name, text]`` win), then recordings
    ``(path, prompt)``. A file of another type is an error naming it."""
    paths = [Path(p) for p in paths or []]
    wrong = [p.name for p in paths if p.suffix.lower() not in AUDIO_SUFFIXES + TEXT_SUFFIXES]
    if wrong:
        raise UploadError(f"unsupported file type: {', '.join(wrong)} (upload {', '.join(AUDIO_SUFFIXES)} "
                          "clips with .txt transcripts or a metadata.csv)")
    texts = transcripts_from_files(paths)
    typed = {str(r[0]).strip(): str(r[1] or "").strip() for r in rows or [] if len(r) >= 2 and r[0]}
    clips = []
    for p in paths:
        if p.suffix.lower() in AUDIO_SUFFIXES:
            clips.append(Clip(p.name, p, typed.get(p.name) or texts.get(p.stem, "")))
    clips += [Clip(f"recording {i + 1}", Path(path), text) for i, (path, text) in enumerate(recordings or [])]
    return clips


def check_clips(clips: list[Clip], sample_rate: int, *, min_clips: int, max_clips: int,
                max_file_mb: float = MAX_FILE_MB) -> list[Clip]:
    """The clips, if all are usable: a supported audio file within the size limit, a transcript in the
    model's alphabet, 0.5-20 s, not silent, mono or stereo, recorded at least at the model's
    ``sample_rate`` (:func:`~tts_adapt.data.validation.low_sample_rate`, the rule of tts-adapt adapt);
    between ``min_clips`` and ``max_clips`` of them. Otherwise :class:`UploadError` listing every bad clip."""
    if len(clips) < min_clips:
        raise UploadError(f"{len(clips)} clip(s) given; at least {min_clips} with transcripts are needed")
    if len(clips) > max_clips:
        raise UploadError(f"{len(clips)} clips given; at most {max_clips} are used: remove some")
    problems = []
    names = [c.name for c in clips]
    problems += [f"{n}: uploaded twice" for n in sorted({n for n in names if names.count(n) > 1})]
    checks = AudioChecks(sample_rate=sample_rate, min_duration=MIN_SECONDS, max_duration=MAX_SECONDS)
    for clip in clips:
        reason = _clip_problem(clip, checks, max_file_mb)
        if reason:
            problems.append(f"{clip.name}: {reason}")
    if problems:
        raise UploadError(f"{len(problems)} clip(s) cannot be used:\n" + "\n".join(problems))
    return clips


def _clip_problem(clip: Clip, checks: AudioChecks, max_file_mb: float) -> str | None:
    if not clip.path.is_file():
        return "the file is missing (upload it again)"
    size_mb = clip.path.stat().st_size / 1e6
    if size_mb > max_file_mb:
        return f"file is {size_mb:.1f} MB, more than the {max_file_mb:g} MB allowed"
    report = InputReport("skip")
    utt = Utterance(str(clip.path), clip.text, "target")
    if not clip.text.strip():
        return "no transcript (type it in the table, or upload a .txt with the same name)"
    if not check_text(utt, report) or check_audio(utt, report, checks) is None:
        return report.skipped[-1].reason
    info = sf.info(str(clip.path))
    if info.channels > MAX_CHANNELS:
        return f"has {info.channels} channels; upload mono or stereo clips"
    return None  # a clip below the model's sample rate is refused by check_audio, as tts-adapt adapt does


def write_target_folder(clips: list[Clip], folder: Path, sample_rate: int) -> Path:
    """Each clip as ``clip_NNN.wav`` (mono, 16-bit, the model's rate) + ``clip_NNN.txt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(clips, start=1):
        wav, _ = load_audio(clip.path, sample_rate)
        save_audio(folder / f"clip_{i:03d}.wav", wav, sample_rate)
        (folder / f"clip_{i:03d}.txt").write_text(clip.text.strip() + "\n", encoding="utf-8")
    return folder


def check_reference(path: str | Path | None, sample_rate: int, max_file_mb: float = MAX_FILE_MB) -> Path:
    """A reference clip for zero-shot speech, if usable (type, size, readable, 1-60 s, not silent)."""
    if not path:
        raise UploadError("upload or record a reference clip to speak in its voice")
    path = Path(path)
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise UploadError(f"reference clip {path.name}: unsupported file type (use {', '.join(AUDIO_SUFFIXES)})")
    if path.is_file() and path.stat().st_size / 1e6 > max_file_mb:
        raise UploadError(f"reference clip {path.name}: more than the {max_file_mb:g} MB allowed")
    report = InputReport("skip")
    # a reference only gives a speaker embedding, so a low rate is upsampled (as tts-adapt synthesize does)
    if check_audio(Utterance(str(path), "", "reference"), report,
                   AudioChecks(sample_rate=sample_rate, min_duration=1.0, max_duration=60.0,
                               allow_upsampling=True)) is None:
        raise UploadError(f"reference clip {path.name}: {report.skipped[-1].reason}")
    return path
