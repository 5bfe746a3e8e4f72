"""Dataset readers: turn a dataset folder into a list of :class:`Utterance`.

Each reader understands one on-disk layout and is registered by name in
:data:`DATASET_READERS` (``vctk``, ``libritts``, ``ljspeech``, ``custom``,
``tts_adapt``). A reader has the signature ``reader(root: Path, report:
InputReport, **kwargs) -> list[Utterance]``; it pairs audio files with their
transcripts and reports what it cannot pair (a missing transcript, a metadata
row whose audio is missing) in ``report`` instead of raising. A folder that is
not the layout at all raises :class:`DatasetLayoutError`, saying what was
expected and what was found.

:func:`read_dataset` picks the reader (``layout="auto"`` uses
:func:`detect_layout`) and then runs :func:`tts_adapt.data.validation.validate`,
which opens every audio file, fills in durations and reports unusable files.

Where coqui-tts's formatters (``TTS.tts.datasets.formatters``) fit they are used,
so transcripts are read exactly as a coqui recipe would read them; their gaps
are covered here:

* ``vctk`` / ``vctk_old`` start from the transcripts, so an audio file without
  one is silently left out, and one empty transcript file aborts the whole read
  (``readlines()[0]`` raises ``IndexError``). Our reader starts from the audio
  files, reports missing transcripts, and reads the transcripts itself when
  coqui's formatter fails on the dataset.
* ``ljspeech`` is used as is; a row whose wav is missing is reported here.
* ``libri_tts`` reads only the ``*.trans.tsv`` files and asserts that every
  listed wav exists, so one missing file aborts the read; we read the
  per-utterance ``*.normalized.txt`` files instead.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tts_adapt.data.samples import InputReport, OnBadInput, Utterance
from tts_adapt.data.validation import ENGLISH_ALPHABET, AudioChecks, check_text, validate

log = logging.getLogger(__name__)

#: A reader: ``(root, report, **kwargs) -> list[Utterance]``.
Reader = Callable[..., list[Utterance]]

#: Registered readers by layout name, in detection order (see :func:`detect_layout`).
DATASET_READERS: dict[str, Reader] = {}

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")


class DatasetLayoutError(ValueError):
    """A dataset folder that does not exist or does not have the expected layout."""


@dataclass(frozen=True)
class _Layout:
    expected: str  # what the layout looks like, with concrete paths, for error messages
    detect: Callable[[Path], bool] | None  # cheap test used by detect_layout; None: never auto-detected


_LAYOUTS: dict[str, _Layout] = {}


def register_reader(name: str, *, expected: str = "", detect: Callable[[Path], bool] | None = None):
    """Decorator registering ``reader`` under ``name`` in :data:`DATASET_READERS`.

    ``expected`` describes the layout (used in :class:`DatasetLayoutError`
    messages); ``detect(root) -> bool`` lets :func:`detect_layout` recognise it.
    Raises ``ValueError`` when ``name`` is already registered.
    """
    if name in DATASET_READERS:
        raise ValueError(f"a dataset reader named {name!r} is already registered")

    def decorator(reader: Reader) -> Reader:
        if name in DATASET_READERS:  # registered between the call and the decoration
            raise ValueError(f"a dataset reader named {name!r} is already registered")
        DATASET_READERS[name] = reader
        _LAYOUTS[name] = _Layout(expected or f"the {name} layout", detect)
        return reader

    return decorator


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return DATASET_READERS[name]
    except KeyError:
        valid = ", ".join(sorted(DATASET_READERS))
        raise ValueError(f"unknown dataset layout {name!r}; valid layouts: {valid}") from None


# --------------------------------------------------------------------------- errors


def _found(root: Path, limit: int = 10) -> str:
    """What is actually at ``root``: its top-level entries (folders end in '/'), at most ``limit``."""
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is a file, not a folder"
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    if not entries:
        return f"{root} is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" ... and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"found in {root}: " + ", ".join(names) + more


def _layout_error(name: str, root: Path, problem: str | None = None) -> DatasetLayoutError:
    lines = [problem or f"{root} does not have the {name} layout"]
    lines.append(f"expected {_LAYOUTS[name].expected}")
    lines.append(_found(root))
    return DatasetLayoutError("\n".join(lines))


def _require_dir(name: str, root: str | os.PathLike) -> Path:
    """``root`` as an absolute path; :class:`DatasetLayoutError` unless it is a folder."""
    root = _abs(root)
    if not root.is_dir():
        raise _layout_error(name, root, f"dataset folder {root} does not exist" if not root.exists() else None)
    return root


# --------------------------------------------------------------------------- helpers


def _abs(path: str | os.PathLike) -> Path:
    # abspath, not resolve(): keep the user's symlinks in the paths we hand back
    return Path(os.path.abspath(path))


def _read_text_file(path: Path) -> str | None:
    """Whole transcript file with whitespace collapsed; ``None`` if it is missing."""
    if not path.is_file():
        return None
    return " ".join(path.read_text(encoding="utf-8", errors="replace").split())


def _missing_transcript(report: InputReport, audio: Path, txt: Path) -> None:
    report.bad(audio, f"transcript file not found: {txt}", "missing transcript")


def _coqui_texts(formatter_name: str, root: Path, **kwargs) -> dict[str, str]:
    """``{absolute audio path: transcript}`` from a coqui formatter; empty if it fails on this dataset."""
    from TTS.tts.datasets import formatters  # slow import (pulls in trainer); only when needed

    try:
        items = getattr(formatters, formatter_name)(str(root), None, **kwargs)
    except (IndexError, ValueError, OSError) as exc:
        # known failures: an empty transcript file (IndexError), files nested
        # deeper than txt/<speaker>/ (ValueError on unpacking), undecodable text
        log.info("coqui formatter %s cannot read %s (%s: %s); reading transcripts directly",
                 formatter_name, root, type(exc).__name__, exc)
        return {}
    return {os.path.normpath(_abs(it["audio_file"])): it["text"].strip() for it in items}


# --------------------------------------------------------------------------- tts_adapt


_MANIFEST_REQUIRED = ("utt_id", "speaker", "speaker_set", "split", "duration", "audio", "text")


def _manifest_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return []


def _detect_tts_adapt(root: Path) -> bool:
    manifest = root / "manifest.csv"
    return manifest.is_file() and set(_MANIFEST_REQUIRED) <= set(_manifest_header(manifest))


@register_reader(
    "tts_adapt",
    expected=("tts_adapt corpus layout: manifest.csv with columns "
              "utt_id,speaker,speaker_set,split,parallel,duration,audio,text and audio files "
              "wav/<speaker>/<speaker>_<nnn>.wav (paths relative to the corpus folder)"),
    detect=_detect_tts_adapt,
)
def read_tts_adapt(root: Path, report: InputReport, *, speaker_sets=None, splits=None) -> list[Utterance]:
    """The embedded corpus (see :mod:`tts_adapt.data.corpus.build`) from its ``manifest.csv``.

    ``split`` is ``"<speaker_set>/<split>"`` (e.g. ``"pretrain/train"``) and
    ``duration`` comes from the manifest. ``speaker_sets`` (subset of
    pretrain/unseen/target) and ``splits`` (train/heldout) keep only those rows.
    """
    from tts_adapt.data.corpus.build import SPEAKER_SETS

    root = _require_dir("tts_adapt", root)
    manifest = root / "manifest.csv"
    if not _detect_tts_adapt(root):
        raise _layout_error("tts_adapt", root)
    speaker_sets = _check_choice("speaker_sets", speaker_sets, SPEAKER_SETS)
    splits = _check_choice("splits", splits, ("train", "heldout"))
    out = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["speaker_set"] not in speaker_sets or row["split"] not in splits:
                continue
            audio = _abs(root / row["audio"])
            if not audio.is_file():
                report.bad(audio, f"audio file not found (listed in {manifest})", "missing audio")
                continue
            out.append(Utterance(
                audio_path=str(audio), text=row["text"], speaker=row["speaker"],
                duration=float(row["duration"]) if row["duration"] else None,
                split=f"{row['speaker_set']}/{row['split']}", utt_id=row["utt_id"],
            ))
    return out


def _check_choice(name: str, chosen, valid: tuple[str, ...]) -> tuple[str, ...]:
    if chosen is None:
        return valid
    chosen = (chosen,) if isinstance(chosen, str) else tuple(chosen)
    unknown = [c for c in chosen if c not in valid]
    if unknown:
        raise ValueError(f"{name}: unknown value(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    return chosen


# --------------------------------------------------------------------------- LJSpeech


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return line.rstrip("\n")
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def _detect_ljspeech(root: Path) -> bool:
    if not ((root / "metadata.csv").is_file() and (root / "wavs").is_dir()):
        return False
    cols = _first_line(root / "metadata.csv").split("|")
    # LJSpeech ids have no extension; a custom metadata.csv names files ("a.wav|...")
    return len(cols) >= 3 and Path(cols[0]).suffix.lower() not in AUDIO_EXTENSIONS


@register_reader(
    "ljspeech",
    expected=("LJSpeech layout: metadata.csv with rows <id>|<raw text>|<normalized text> "
              "and audio files wavs/<id>.wav"),
    detect=_detect_ljspeech,
)
def read_ljspeech(root: Path, report: InputReport, *, name: str = "ljspeech") -> list[Utterance]:
    """LJSpeech: ``metadata.csv`` (``id|raw|normalized``; the normalized text is used) + ``wavs/<id>.wav``.

    Single speaker, called ``name``. Rows whose wav is missing are reported.
    """
    root = _require_dir("ljspeech", root)
    metadata = root / "metadata.csv"
    if not metadata.is_file() or not (root / "wavs").is_dir():
        raise _layout_error("ljspeech", root)
    from TTS.tts.datasets import formatters

    try:
        items = formatters.ljspeech(str(root), "metadata.csv")
    except IndexError:
        # coqui rejects the whole file on one short row without saying which: find it
        raise _layout_error("ljspeech", root, _short_row(metadata)) from None
    except UnicodeDecodeError as exc:
        raise _layout_error("ljspeech", root, f"{metadata} is not UTF-8 text ({exc})") from None
    out = []
    for it in items:
        audio = _abs(it["audio_file"])
        if not audio.is_file():
            report.bad(audio, f"audio file not found (listed in {metadata})", "missing audio")
            continue
        out.append(Utterance(audio_path=str(audio), text=it["text"].strip(), speaker=name, utt_id=audio.stem))
    return out


def _short_row(metadata: Path) -> str:
    with open(metadata, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            n = len(line.split("|"))
            if n < 3:
                what = "is blank" if not line.strip() else f"has {n} column(s)"
                return f"{metadata} line {lineno} {what}; LJSpeech rows need 3 '|'-separated columns"
    return f"{metadata} has rows with fewer than 3 '|'-separated columns"


# --------------------------------------------------------------------------- VCTK


_VCTK_EXPECTED = (
    "VCTK layout: wav48_silence_trimmed/<speaker>/<speaker>_<nnn>_mic1.flac and "
    "txt/<speaker>/<speaker>_<nnn>.txt (VCTK 0.92), or wav48/<speaker>/<speaker>_<nnn>.wav and "
    "txt/<speaker>/<speaker>_<nnn>.txt (older VCTK)"
)


def _detect_vctk(root: Path) -> bool:
    return (root / "txt").is_dir() and ((root / "wav48_silence_trimmed").is_dir() or (root / "wav48").is_dir())


@register_reader("vctk", expected=_VCTK_EXPECTED, detect=_detect_vctk)
def read_vctk(root: Path, report: InputReport, *, mic: str = "mic1") -> list[Utterance]:
    """VCTK 0.92 (``wav48_silence_trimmed/*/*_<mic>.flac``) or the older ``wav48/*/*.wav`` layout.

    Transcripts are ``txt/<speaker>/<utt_id>.txt`` (first line, as coqui reads
    them); ``utt_id`` is e.g. ``p225_001`` and ``speaker`` e.g. ``p225``. Only
    ``mic`` recordings are read (VCTK 0.92 only); a speaker without them (p280
    has no mic2) is absent rather than replaced by mic1 as coqui does.
    """
    root = _require_dir("vctk", root)
    if not _detect_vctk(root):
        raise _layout_error("vctk", root)
    if (root / "wav48_silence_trimmed").is_dir():
        suffix = f"_{mic}.flac"
        audio_files = sorted((root / "wav48_silence_trimmed").glob(f"*/*{suffix}"))
        texts = _coqui_texts("vctk", root, wavs_path="wav48_silence_trimmed", mic=mic)
        where = f"wav48_silence_trimmed/<speaker>/*{suffix}"
    else:
        suffix = ".wav"
        audio_files = sorted((root / "wav48").glob("*/*.wav"))
        texts = _coqui_texts("vctk_old", root, wavs_path="wav48")
        where = "wav48/<speaker>/*.wav"
    if not audio_files:
        raise _layout_error("vctk", root, f"no audio files matching {where} in {root}")
    out = []
    for audio in audio_files:
        audio = _abs(audio)
        speaker = audio.parent.name
        utt_id = audio.name[: -len(suffix)]
        txt = _abs(root / "txt" / speaker / f"{utt_id}.txt")
        text = texts.get(os.path.normpath(audio))
        if text is None:  # coqui skipped it (no transcript) or could not read the dataset
            if not txt.is_file():
                _missing_transcript(report, audio, txt)
                continue
            text = _vctk_transcript(txt)
        out.append(Utterance(audio_path=str(audio), text=text, speaker=speaker, utt_id=utt_id))
    return out


def _vctk_transcript(txt: Path) -> str:
    # the same rule as coqui's formatter (the first line), so a transcript reads
    # the same whether or not coqui could read the dataset
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[0].strip() if lines else ""


# --------------------------------------------------------------------------- LibriTTS


def _is_libritts_wav(path: Path) -> bool:
    # <speaker>/<chapter>/<speaker>_<chapter>_<...>.wav, speaker and chapter numeric
    chapter, speaker = path.parent.name, path.parent.parent.name
    return speaker.isdigit() and chapter.isdigit() and path.name.startswith(f"{speaker}_{chapter}_")


def _libritts_wavs(root: Path, limit: int | None = None) -> list[tuple[Path, str | None]]:
    """``(wav, subset)`` pairs: ``root/<spk>/<chapter>/`` (subset None) and ``root/<subset>/<spk>/<chapter>/``."""
    found = []
    for pattern, has_subset in (("*/*/*.wav", False), ("*/*/*/*.wav", True)):
        for wav in root.glob(pattern):
            if _is_libritts_wav(wav):
                found.append((wav, wav.parent.parent.parent.name if has_subset else None))
                if limit is not None and len(found) >= limit:
                    return found
    return sorted(found)


def _detect_libritts(root: Path) -> bool:
    return bool(_libritts_wavs(root, limit=1))


@register_reader(
    "libritts",
    expected=("LibriTTS layout: <speaker>/<chapter>/<speaker>_<chapter>_<nnnnnn>_<nnnnnn>.wav with "
              "<same name>.normalized.txt next to each wav, directly under the root or under subset "
              "folders such as train-clean-100/"),
    detect=_detect_libritts,
)
def read_libritts(root: Path, report: InputReport) -> list[Utterance]:
    """LibriTTS / LibriTTS-R with per-utterance ``*.normalized.txt`` transcripts.

    ``split`` is the subset folder (e.g. ``train-clean-100``) or ``None`` when
    the speaker folders are directly under ``root``; ``*.original.txt`` (the
    unnormalised text) is ignored.
    """
    root = _require_dir("libritts", root)
    wavs = _libritts_wavs(root)
    if not wavs:
        raise _layout_error("libritts", root)
    out = []
    for wav, subset in wavs:
        wav = _abs(wav)
        txt = wav.with_name(wav.name[: -len(".wav")] + ".normalized.txt")
        text = _read_text_file(txt)
        if text is None:
            _missing_transcript(report, wav, txt)
            continue
        out.append(Utterance(audio_path=str(wav), text=text, speaker=wav.parent.parent.name,
                             split=subset, utt_id=wav.stem))
    return out


# --------------------------------------------------------------------------- custom


_HEADER_NAMES = {"file", "filename", "file_name", "path", "audio", "audio_file", "audio_path", "wav", "id"}


def _detect_custom(root: Path) -> bool:
    return (root / "metadata.csv").is_file() or any(root.glob("*.wav"))


@register_reader(
    "custom",
    expected=("custom layout: <name>.wav files with same-named <name>.txt transcripts in the folder, "
              "or metadata.csv with rows <file>|<text> or <file>|<speaker>|<text> (optional header line)"),
    detect=_detect_custom,
)
def read_custom(root: Path, report: InputReport, *, speaker: str | None = None) -> list[Utterance]:
    """A folder of ``*.wav`` + ``*.txt``, or a ``metadata.csv`` naming the files.

    ``metadata.csv`` takes precedence. Its file column is relative to ``root``
    (``.wav`` is appended when it has no extension). The speaker is the row's
    speaker column, else ``speaker``, else the folder's name.
    """
    root = _require_dir("custom", root)
    default_speaker = speaker or _abs(root).name
    if (root / "metadata.csv").is_file():
        return _read_custom_metadata(root, report, default_speaker)
    wavs = sorted(root.glob("*.wav"))
    if not wavs:
        raise _layout_error("custom", root)
    out = []
    for wav in wavs:
        wav = _abs(wav)
        txt = wav.with_suffix(".txt")
        text = _read_text_file(txt)
        if text is None:
            _missing_transcript(report, wav, txt)
            continue
        out.append(Utterance(audio_path=str(wav), text=text, speaker=default_speaker, utt_id=wav.stem))
    return out


def _read_custom_metadata(root: Path, report: InputReport, default_speaker: str) -> list[Utterance]:
    metadata = root / "metadata.csv"
    with open(metadata, encoding="utf-8", errors="replace") as fh:
        rows = [(n, line.rstrip("\r\n")) for n, line in enumerate(fh, start=1) if line.strip()]
    if not rows:
        raise _layout_error("custom", root, f"{metadata} is empty")
    # the first row (header or data) fixes the column count for the file
    first_lineno, first_line = rows[0]
    first = first_line.split("|")
    ncols = len(first)
    if ncols not in (2, 3):
        raise _layout_error("custom", root, f"{metadata} line {first_lineno} has {ncols} "
                                            "'|'-separated column(s), expected 2 or 3")
    if first[0].strip().lower() in _HEADER_NAMES:
        rows = rows[1:]
    out = []
    for lineno, line in rows:
        # the text is last, so extra '|' belong to it (and fail the alphabet check)
        cols = line.split("|", maxsplit=ncols - 1)
        if len(cols) != ncols:
            report.bad(f"{metadata}:{lineno}", f"row has {len(cols)} column(s), expected {ncols}",
                       "malformed metadata")
            continue
        name = cols[0].strip()
        audio = _abs(root / (name if Path(name).suffix else name + ".wav"))
        if not audio.is_file():
            report.bad(audio, f"audio file not found (listed in {metadata} line {lineno})", "missing audio")
            continue
        spk = cols[1].strip() if ncols == 3 and cols[1].strip() else default_speaker
        out.append(Utterance(audio_path=str(audio), text=" ".join(cols[-1].split()), speaker=spk,
                             utt_id=audio.stem))
    return out


# --------------------------------------------------------------------------- entry points


def detect_layout(root: str | os.PathLike) -> str:
    """Name of the first registered layout whose ``detect`` recognises ``root``.

    Order: tts_adapt, ljspeech, vctk, libritts, custom (the embedded corpus also
    has ``wav/`` + ``txt/`` folders, and a custom ``metadata.csv`` must not be
    taken for LJSpeech's). Raises :class:`DatasetLayoutError` listing every
    known layout and what was found when none matches.
    """
    root = _abs(root)
    if root.is_dir():
        for name, layout in _LAYOUTS.items():
            if layout.detect is not None and layout.detect(root):
                return name
        problem = f"cannot recognise the dataset layout of {root}"
    else:
        problem = f"dataset folder {root} does not exist" if not root.exists() else f"{root} is not a folder"
    expected = "\n".join(f"  {name}: {lay.expected}" for name, lay in _LAYOUTS.items() if lay.detect is not None)
    raise DatasetLayoutError(f"{problem}\nexpected one of:\n{expected}\n{_found(root)}")


def read_dataset(
    root: str | os.PathLike,
    layout: str = "auto",
    *,
    report: InputReport | None = None,
    on_bad_input: str | OnBadInput = "skip",
    checks: AudioChecks | None = None,
    alphabet: frozenset[str] | None = ENGLISH_ALPHABET,
    validate_audio: bool = True,
    workers: int = 1,
    progress: bool = False,
    **kwargs,
) -> tuple[list[Utterance], InputReport]:
    """Read and check a dataset; return ``(usable utterances, report)``.

    ``layout`` is a name in :data:`DATASET_READERS` or ``"auto"``; ``kwargs`` go
    to the reader (e.g. ``mic="mic2"`` for VCTK). Transcripts are always checked
    against ``alphabet``; with ``validate_audio`` every audio file is opened and
    checked with ``checks`` (durations filled in), using ``workers`` processes
    (``progress`` shows a progress bar).
    A given ``report`` is extended and its own policy applies; otherwise a new
    one with ``on_bad_input`` is made. Skipped files are summarised in the log.
    Raises :class:`DatasetLayoutError` when ``root`` is missing or not the layout,
    and :class:`BadInputError` on the first bad file under ``on_bad_input="error"``.
    """
    root = _abs(root)
    report = report if report is not None else InputReport(OnBadInput.parse(on_bad_input))
    name = detect_layout(root) if layout == "auto" else layout
    reader = get_reader(name)
    _require_dir(name, root)  # the built-in readers check this too; registered ones may not
    utterances = reader(root, report, **kwargs)
    if validate_audio:
        utterances = validate(utterances, report, checks or AudioChecks(), alphabet, workers=workers,
                              progress=progress)
    else:
        utterances = [u for u in utterances if check_text(u, report, alphabet)]
    level = logging.WARNING if report.skipped else logging.INFO
    log.log(level, "%s (%s): %d usable utterance(s); %s", root, name, len(utterances), report.summary())
    return utterances, report
