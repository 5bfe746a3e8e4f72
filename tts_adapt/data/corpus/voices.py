"""Synthetic speakers from flite and espeak-ng, each with its own pitch, range, rate and timbre.

A *speaker* is a base voice plus four settings:

* ``pitch``: mean F0 target (flite, Hz) or espeak-ng's 0-99 pitch;
* ``pitch_range``: F0 spread (flite, Hz standard deviation) or espeak-ng's SSML
  prosody range in percent;
* ``rate``: speaking-rate factor (1 = the voice's default);
* ``timbre``: a resampling factor applied with sox ``speed``; it scales every
  frequency, formants included, which mimics a longer or shorter vocal tract —
  the setting that most separates speakers for a speaker encoder. The
  synthesiser's rate is pre-compensated so that ``rate`` is the final rate.

Base voices: flite's statistical voices built from CMU ARCTIC speakers
(``awb``, ``rms``, ``slt``) and its diphone voice ``kal16``; espeak-ng's voice
variants crossed with its English accents.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

FLITE_VOICES = ("slt", "awb", "rms", "kal16")  # slt first: even tiny corpora have a target-worthy voice
# Natural mean F0 (Hz) of the flite voices, the centre of their pitch settings.
FLITE_F0 = {"awb": 110.0, "rms": 106.0, "slt": 175.0, "kal16": 105.0}
# flite's rms voice ignores the F0 target features (measured with pYIN: the same
# mean F0 for any target), so its pitch is moved by sox instead.
FLITE_PITCH_BY_SOX = {"rms"}
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
FEMALE_VARIANTS = {"f1", "f2", "f3", "f4", "f5"}


@dataclass(frozen=True)
class SpeakerSpec:
    """Everything needed to make one speaker's audio; ``name`` is the corpus speaker id."""

    name: str
    engine: str  # "flite" | "espeak-ng"
    voice: str  # flite voice, or "<accent>+<variant>" for espeak-ng
    pitch: float
    pitch_range: float
    rate: float
    timbre: float
    gender: str

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


class SynthesisError(RuntimeError):
    pass


def check_synthesisers() -> None:
    """Raise a clear error when a program needed for the corpus is missing."""
    missing = [p for p in ("flite", "espeak-ng", "sox") if shutil.which(p) is None]
    if missing:
        raise SynthesisError(
            "the default corpus needs the Debian packages flite, espeak-ng and sox; missing: "
            + ", ".join(missing) + " (install with: sudo apt-get install flite espeak-ng sox)"
        )


# Ranges of the settings, and how much each one separates speakers for a speaker
# encoder (timbre most, rate least); used to spread speakers apart.
FLITE_RANGES = {"pitch": (0.8, 1.3), "pitch_range": (8.0, 40.0), "rate": (0.8, 1.25), "timbre": (0.86, 1.16)}
ESPEAK_RANGES = {"pitch": (10.0, 90.0), "pitch_range": (30.0, 250.0), "rate": (0.8, 1.25), "timbre": (0.85, 1.18)}
SETTING_WEIGHTS = np.array([1.0, 0.5, 0.5, 1.5])  # pitch, pitch_range, rate, timbre
CATEGORY_DISTANCE = 0.35  # extra distance for a different accent and for a different variant


def _farthest_points(rng: np.random.Generator, n: int, ranges: dict, categories: list[tuple]) -> list[tuple]:
    """Choose ``n`` (category, settings) pairs, each as far as possible from those chosen before.

    Candidates are random settings for every category; distance is the weighted
    Euclidean distance of settings scaled to [0, 1], plus ``CATEGORY_DISTANCE``
    per differing categorical field (accent, variant). Greedy max-min selection
    gives a well-spread, deterministic design instead of near-duplicate speakers.
    """
    per_cat = max(8, (4 * n) // max(1, len(categories)) + 8)
    lo = np.array([r[0] for r in ranges.values()])
    hi = np.array([r[1] for r in ranges.values()])
    unit = rng.random((len(categories) * per_cat, len(ranges)))
    cats = [c for c in categories for _ in range(per_cat)]
    levels = [sorted({c[k] for c in categories}) for k in range(len(categories[0]))]
    cat_codes = np.array([[levels[k].index(x) for k, x in enumerate(c)] for c in cats])
    cat_index = np.repeat(np.arange(len(categories)), per_cat)
    chosen = [int(rng.integers(len(cats)))]
    min_dist = np.full(len(cats), np.inf)
    while len(chosen) < n:
        j = chosen[-1]
        d = np.sqrt((((unit - unit[j]) * SETTING_WEIGHTS) ** 2).sum(axis=1))
        d += CATEGORY_DISTANCE * (cat_codes != cat_codes[j]).sum(axis=1)
        min_dist = np.minimum(min_dist, d)
        min_dist[chosen] = -np.inf
        score = min_dist.copy()
        used = np.isin(cat_index, cat_index[chosen])
        if not used.all():  # every category once before any repeats
            score[used] = -np.inf
        chosen.append(int(score.argmax()))
    values = lo + unit * (hi - lo)
    return [(cats[i], {k: float(v) for k, v in zip(ranges, values[i])}) for i in chosen]


def design_speakers(num_speakers: int, seed: int = 0) -> list[SpeakerSpec]:
    """A deterministic set of ``num_speakers`` speakers, as different from each other as the engines allow.

    About a quarter are flite speakers (the flite voices in turn); the rest are
    espeak-ng accent × variant voices. Within each group, settings are chosen by
    farthest-point sampling so no two speakers sound alike.
    """
    if num_speakers < 1:
        raise ValueError(f"num_speakers must be at least 1, got {num_speakers}")
    rng = np.random.default_rng(seed)
    n_flite = max(1, round(num_speakers / 4)) if num_speakers >= 4 else min(num_speakers, len(FLITE_VOICES))
    n_espeak = num_speakers - n_flite
    specs = []
    for v, voice in enumerate(FLITE_VOICES):
        n_voice = len(range(v, n_flite, len(FLITE_VOICES)))
        if n_voice == 0:
            continue
        for k, (_, x) in enumerate(_farthest_points(rng, n_voice, FLITE_RANGES, [(voice,)])):
            i = v + k * len(FLITE_VOICES)
            specs.append(SpeakerSpec(
                name=f"fl{i:02d}{voice.replace('16', '')}", engine="flite", voice=voice,
                pitch=round(FLITE_F0[voice] * x["pitch"], 1), pitch_range=round(x["pitch_range"], 1),
                rate=round(x["rate"], 3), timbre=round(x["timbre"], 3), gender="F" if voice == "slt" else "M",
            ))
    specs.sort(key=lambda s: s.name)
    combos = [(a, v) for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    if n_espeak:
        for i, ((accent, variant), x) in enumerate(_farthest_points(rng, n_espeak, ESPEAK_RANGES, combos)):
            specs.append(SpeakerSpec(
                name=f"es{i:02d}{variant}", engine="espeak-ng", voice=f"{accent}+{variant}",
                pitch=round(x["pitch"]), pitch_range=round(x["pitch_range"]), rate=round(x["rate"], 3),
                timbre=round(x["timbre"], 3), gender="F" if variant in FEMALE_VARIANTS else "M",
            ))
    return specs


def synthesize_raw(spec: SpeakerSpec, text: str, out_wav: Path) -> None:
    """Synthesise ``text`` with ``spec`` into ``out_wav`` (engine's own rate, before sox)."""
    # the synthesiser speaks at rate/timbre so that after `speed timbre` the rate is `rate`
    synth_rate = spec.rate / spec.timbre
    if spec.engine == "flite":
        # flite's targets are in the output's frequency scale; undo the later timbre shift
        cmd = ["flite", "-voice", spec.voice, "-t", text, "-o", str(out_wav),
               "--setf", f"int_f0_target_mean={spec.pitch / spec.timbre:.1f}",
               "--setf", f"int_f0_target_stddev={spec.pitch_range / spec.timbre:.1f}",
               "--setf", f"duration_stretch={1.0 / synth_rate:.3f}"]
    elif spec.engine == "espeak-ng":
        ssml = (f'<speak><prosody range="{spec.pitch_range:.0f}%">{escape(text)}</prosody></speak>')
        cmd = ["espeak-ng", "-m", "-v", spec.voice, "-p", str(int(spec.pitch)),
               "-s", str(int(round(175 * synth_rate))), "-w", str(out_wav), ssml]
    else:
        raise ValueError(f"unknown engine {spec.engine!r}; valid: flite, espeak-ng")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    # flite exits 0 even when it cannot load a voice, so check the file as well
    if proc.returncode != 0 or not out_wav.is_file() or out_wav.stat().st_size <= 44:
        raise SynthesisError(f"{spec.engine} failed for speaker {spec.name} ({spec.voice}): "
                             f"{(proc.stderr or proc.stdout).strip()[:300]}")


def render(spec: SpeakerSpec, text: str, out_wav: Path, sample_rate: int) -> None:
    """Synthesise, apply the speaker's timbre, convert to mono ``sample_rate`` and trim silence."""
    with tempfile.TemporaryDirectory(prefix="tts_adapt_synth_") as tmp:
        raw = Path(tmp) / "raw.wav"
        synthesize_raw(spec, text, raw)
        effects = ["speed", f"{spec.timbre:.4f}"]
        if spec.engine == "flite" and spec.voice in FLITE_PITCH_BY_SOX:
            cents = 1200.0 * math.log2(spec.pitch / FLITE_F0[spec.voice])
            effects = ["pitch", f"{cents:.0f}"] + effects
        # -R: repeatable (fixed seeds), -D: no dither, so a seed always gives the same audio
        cmd = ["sox", "-R", "-D", str(raw), "-b", "16", "-c", "1", str(out_wav), *effects, "rate", "-h", str(sample_rate),
               # trim leading and trailing silence (below -50 dB relative), keep 50 ms of room
               "silence", "1", "0.02", "0.3%", "reverse", "silence", "1", "0.02", "0.3%", "reverse",
               "pad", "0.05", "0.05"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SynthesisError(f"sox failed for speaker {spec.name}: {proc.stderr.strip()[:300]}")
