"""Checks that decide whether an utterance can be used for training or evaluation.

Each problem is reported with the file's path and a reason in the user's terms;
the :class:`~tts_adapt.data.samples.InputReport` policy decides between
skipping (default) and stopping.
"""

from __future__ import annotations

import logging
import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from tts_adapt.data.audio import AudioError, load_audio, rms_dbfs
from tts_adapt.data.samples import InputReport, Utterance
from tts_adapt.parallel import process_pool

log = logging.getLogger(__name__)

#: Characters an English grapheme front end accepts before phonemisation.
ENGLISH_ALPHABET = frozenset(string.ascii_letters + string.digits + " .,;:!?'\"-()")


#: a clip at a lower rate than the model's is upsampled (with a warning) when it keeps at least this share of
#: the model's band, e.g. VCTK's or LibriTTS's 16-24 kHz for a 22.05 kHz model; below it, it is refused
MIN_BAND_SHARE = 0.7


def low_sample_rate(file_rate: int, model_rate: int) -> str | None:
    """Why a clip recorded at ``file_rate`` Hz cannot be used for a model at ``model_rate`` Hz, or None.

    The one rule for the CLI, the Python API and the demo. Upsampling adds no frequencies, so a clip far
    below the model's rate (8 kHz telephone speech for a 16 kHz model) would teach the model a band-limited,
    muffled voice: such a clip is refused. A clip that keeps most of the band (at least
    :data:`MIN_BAND_SHARE` of the model's rate) is upsampled, with a warning on stderr where it happens.
    """
    if file_rate >= MIN_BAND_SHARE * model_rate:
        return None
    return (f"recorded at {file_rate} Hz, far below the model's {model_rate} Hz (upsampling cannot restore the "
            f"missing frequencies; at least {round(MIN_BAND_SHARE * model_rate)} Hz is needed)")


def speakable(text: str) -> bool:
    """Whether ``text`` has something the models' front ends can speak: a Latin letter (accents allowed)
    or a digit. espeak-ng reads other scripts and emoji by name ("Chinese letter", "grinning face") and
    drops punctuation, so text without either gives no speech or the wrong speech."""
    return any(c.isdigit() or ("a" <= c.lower() <= "z")
               for c in unicodedata.normalize("NFKD", text) if c.isascii())


def unspeakable_reason(text: str) -> str:
    """The end of a message about ``text`` that :func:`speakable` refuses (the text, shortened, and why)."""
    return f"{text[:60]!r} has nothing to speak: no Latin letters or digits, only other scripts, emoji or punctuation"


@dataclass(frozen=True)
class AudioChecks:
    """Thresholds for :func:`check_audio`.

    ``expected_sample_rate`` / ``expected_channels``: when set, a file that
    differs is bad input (a dataset whose files should all be alike); when
    ``None``, any channel count and any rate from ``sample_rate`` up are accepted
    and converted with a note. A file below ``sample_rate`` is bad input
    (:func:`low_sample_rate`) unless ``allow_upsampling``, which upsamples it with a
    logged warning (reference clips, which only give a speaker embedding).
    """

    sample_rate: int = 16000
    expected_sample_rate: int | None = None
    expected_channels: int | None = None
    min_duration: float = 0.3
    max_duration: float = 30.0
    silence_dbfs: float = -60.0
    allow_upsampling: bool = False


def check_text(utt: Utterance, report: InputReport, alphabet: frozenset[str] | None = ENGLISH_ALPHABET) -> bool:
    """Transcript checks: present, not empty, only characters of ``alphabet``, something speakable."""
    text = utt.text.strip()
    if not text:
        report.bad(utt.audio_path, "transcript is empty", "empty transcript")
        return False
    if alphabet is not None:
        outside = sorted(set(text) - alphabet)
        if outside:
            shown = " ".join(repr(c) for c in outside[:10])
            report.bad(
                utt.audio_path,
                f"transcript has characters outside the model's alphabet: {shown}",
                "characters outside alphabet",
            )
            return False
    if not speakable(text):
        report.bad(utt.audio_path, f"transcript {unspeakable_reason(text)}", "nothing speakable")
        return False
    return True


def check_audio(utt: Utterance, report: InputReport, checks: AudioChecks) -> Utterance | None:
    """Open the audio, check it, and return the utterance with its duration filled in."""
    path = utt.audio_path
    if not Path(path).is_file():
        report.bad(path, "audio file not found", "missing audio")
        return None
    if Path(path).stat().st_size == 0:
        report.bad(path, "audio file is empty (0 bytes)", "empty audio")
        return None
    try:
        info = sf.info(path)
    except Exception as exc:
        report.bad(path, f"unreadable audio ({_short(exc)})", "unreadable audio")
        return None
    if checks.expected_sample_rate is not None and info.samplerate != checks.expected_sample_rate:
        report.bad(
            path, f"sample rate is {info.samplerate} Hz, expected {checks.expected_sample_rate} Hz", "wrong sample rate"
        )
        return None
    if checks.expected_channels is not None and info.channels != checks.expected_channels:
        report.bad(path, f"has {info.channels} channels, expected {checks.expected_channels}", "wrong channel count")
        return None
    too_low = low_sample_rate(info.samplerate, checks.sample_rate)
    if too_low and not checks.allow_upsampling:
        report.bad(path, too_low, "sample rate too low")
        return None
    if info.samplerate < checks.sample_rate:
        log.warning("%s: upsampling %d Hz to %d Hz (nothing above %d Hz)", path, info.samplerate, checks.sample_rate,
                    info.samplerate // 2)
    try:
        wav, notes = load_audio(path, checks.sample_rate)
    except AudioError as err:
        report.bad(path, err.reason, err.category)
        return None
    for n in notes:
        report.note(path, n, "resampled" if "resampled" in n else "down-mixed")
    duration = len(wav) / checks.sample_rate
    if duration < checks.min_duration:
        report.bad(path, f"too short ({duration:.2f} s < {checks.min_duration} s)", "too short")
        return None
    if duration > checks.max_duration:
        report.bad(path, f"too long ({duration:.1f} s > {checks.max_duration} s)", "too long")
        return None
    level = rms_dbfs(wav)
    if level < checks.silence_dbfs or float(np.max(np.abs(wav))) < 1e-4:
        report.bad(path, f"audio is silent (RMS {level:.1f} dBFS)", "silent")
        return None
    return utt.replace(duration=round(duration, 3))


def validate(
    utterances: Iterable[Utterance],
    report: InputReport,
    checks: AudioChecks = AudioChecks(),
    alphabet: frozenset[str] | None = ENGLISH_ALPHABET,
    *,
    workers: int = 1,
    progress: bool = True,
) -> list[Utterance]:
    """Return the usable utterances (durations measured); record the rest in ``report``.

    With ``workers > 1`` audio is checked in parallel processes; the outcome and
    the order are the same as with one worker.
    """
    utterances = [u for u in utterances if check_text(u, report, alphabet)]
    if workers > 1 and len(utterances) > 1:
        with process_pool(workers) as pool:
            chunks = [utterances[i::workers] for i in range(workers)]
            futures = [pool.submit(_validate_chunk, c, report.on_bad_input, checks) for c in chunks]
            results: dict[int, Utterance] = {}
            for w, fut in enumerate(futures):
                kept, sub = fut.result()
                report.merge(sub)
                for j, u in kept:
                    results[w + j * workers] = u
        return [results[i] for i in sorted(results)]
    kept = []
    for u in tqdm(utterances, desc="checking audio", unit="utt", disable=not progress, leave=False):
        checked = check_audio(u, report, checks)
        if checked is not None:
            kept.append(checked)
    return kept


def _validate_chunk(chunk: list[Utterance], policy, checks: AudioChecks):
    sub = InputReport(policy)
    kept = []
    for j, u in enumerate(chunk):
        checked = check_audio(u, sub, checks)
        if checked is not None:
            kept.append((j, checked))
    return kept, sub


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
