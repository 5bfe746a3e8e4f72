"""Build the embedded multi-speaker corpus, offline, in the VCTK folder layout.

Layout of ``out/``::

    wav/<spk>/<spk>_<nnn>.wav     mono, 16-bit, trimmed, loudness-normalised
    txt/<spk>/<spk>_<nnn>.txt     transcript
    manifest.csv                  one row per utterance (see MANIFEST_FIELDS)
    speakers.json                 each speaker's voice and settings, and its speaker set
    prompts.txt                   the prompt set the speakers draw from
    corpus.json                   the build configuration; its presence marks a finished build

Speaker sets: ``pretrain`` (train the base model), ``unseen`` (never trained on;
zero-shot tests) and ``target`` (held out for adaptation). Every speaker's
utterances are split into ``train`` and ``heldout``; the parallel sentences,
read by every speaker, are always held out, so evaluation can compare speakers
on the same text. With the template text (the default) the other sentences are
drawn from a few hundred shared prompts; with the diverse text
(``CorpusConfig(text="diverse")``, see :mod:`.text`) each is read by one speaker
only, so the corpus holds thousands of distinct sentences.

With ``CorpusConfig(natural_target="joe")`` one more speaker joins the target set,
after the designed ones: a natural-sounding Piper voice (``pi00joe``, see
:mod:`.voices`). It reads as many sentences as the others, split the same way;
every other speaker's sentences and audio stay as they are without it.
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
import warnings
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from tts_adapt.data.audio import save_audio
from tts_adapt.data.corpus.corpus_config import SPEAKER_SETS, CorpusConfig, CorpusText
from tts_adapt.data.corpus.manifest import read_manifest
from tts_adapt.data.corpus.prompts import generate_prompts
from tts_adapt.data.corpus.text import diverse_prompts
from tts_adapt.data.corpus.voices import (
    SpeakerSpec,
    check_piper,
    check_synthesisers,
    design_speakers,
    natural_speaker,
    render,
)
from tts_adapt.io import write_json_atomic, write_text_atomic
from tts_adapt.parallel import process_pool

MANIFEST_FIELDS = ("utt_id", "speaker", "speaker_set", "split", "parallel", "duration", "audio", "text")


@dataclass(frozen=True)
class CorpusSummary:
    out: str
    speakers: dict[str, int]
    utterances: int
    hours: float
    size_bytes: int
    seconds: float
    reused: bool

    def __str__(self) -> str:
        sets = ", ".join(f"{n} {s}" for s, n in self.speakers.items())
        verb = "reused existing corpus" if self.reused else f"built in {self.seconds:.0f} s"
        return (f"{self.out}: {sum(self.speakers.values())} speakers ({sets}), {self.utterances} utterances, "
                f"{self.hours:.2f} h of audio, {self.size_bytes / 1e6:.0f} MB; {verb}")


def assign_speaker_sets(specs: list[SpeakerSpec], config: CorpusConfig) -> dict[str, str]:
    """Choose target and unseen speakers; the rest pretrain.

    Targets include the first flite ``slt`` speaker and espeak-ng speakers; unseen
    speakers mix flite and espeak-ng voices so zero-shot tests cover both engines.
    """
    rng = random.Random(config.seed + 1)
    names = [s.name for s in specs]
    slt = [s.name for s in specs if s.voice == "slt"]
    espeak = [s.name for s in specs if s.engine == "espeak-ng"]
    flite = [s.name for s in specs if s.engine == "flite"]
    targets: list[str] = slt[:1]
    pool = [n for n in espeak if n not in targets]
    rng.shuffle(pool)
    targets += pool[: config.target_speakers - len(targets)]
    for n in names:  # tiny corpora: fill from whatever is left
        if len(targets) >= config.target_speakers:
            break
        if n not in targets:
            targets.append(n)
    rest_flite = [n for n in flite if n not in targets]
    rest_espeak = [n for n in espeak if n not in targets]
    rng.shuffle(rest_flite)
    rng.shuffle(rest_espeak)
    n_unseen_flite = min(len(rest_flite) - 1, max(1, config.unseen_speakers // 3)) if len(rest_flite) > 1 else 0
    unseen = rest_flite[:n_unseen_flite] + rest_espeak[: config.unseen_speakers - n_unseen_flite]
    for n in names:
        if len(unseen) >= config.unseen_speakers:
            break
        if n not in targets and n not in unseen:
            unseen.append(n)
    roles = {n: "pretrain" for n in names}
    roles.update({n: "unseen" for n in unseen})
    roles.update({n: "target" for n in targets})
    return roles


def plan_utterances(specs: list[SpeakerSpec], prompts: list[str], roles: dict[str, str],
                    config: CorpusConfig) -> list[dict]:
    """Which speaker reads which sentence, and each utterance's split.

    Every speaker reads the parallel prompts (the first ones), then its own: drawn
    from the shared rest with the template text, dealt out so that no two speakers
    share one with the diverse text (the best-covering prompts first, in a seeded order).
    Speakers after the first ``config.speakers`` (the natural target) come last in the draws,
    so that they change no other speaker's sentences.
    """
    rng = random.Random(config.seed + 2)
    parallel = prompts[: config.parallel]
    own_pool = prompts[config.parallel:]
    n_own = config.utterances - config.parallel
    if config.text == CorpusText.DIVERSE:
        designed = min(len(specs), config.speakers)
        dealt = own_pool[: n_own * designed]
        rng.shuffle(dealt)
        for k in range(designed, len(specs)):  # the next prompts, each block in a seeded order
            extra = own_pool[n_own * k:n_own * (k + 1)]
            rng.shuffle(extra)
            dealt += extra
    rows = []
    for k, spec in enumerate(specs):
        if config.text == CorpusText.DIVERSE:
            own = dealt[k * n_own:(k + 1) * n_own]
        else:
            own = rng.sample(own_pool, n_own)
        texts = parallel + own
        for n, text in enumerate(texts, start=1):
            is_parallel = n <= config.parallel
            heldout = is_parallel or n <= config.parallel + config.heldout
            utt_id = f"{spec.name}_{n:03d}"
            rows.append({
                "utt_id": utt_id, "speaker": spec.name, "speaker_set": roles[spec.name],
                "split": "heldout" if heldout else "train", "parallel": int(is_parallel),
                "audio": f"wav/{spec.name}/{utt_id}.wav", "text": text,
            })
    return rows


def _render_one(spec: SpeakerSpec, text: str, wav_path: Path, txt_path: Path, sample_rate: int,
                loudness_lufs: float) -> float:
    """Make one utterance (audio + transcript); returns its duration in seconds."""
    import pyloudnorm

    if wav_path.is_file() and txt_path.is_file():  # written atomically, so present means complete
        return sf.info(str(wav_path)).duration
    tmp = wav_path.with_name(f".{wav_path.stem}.raw.wav")
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        render(spec, text, tmp, sample_rate)
        wav, sr = sf.read(str(tmp), dtype="float64")
    finally:
        tmp.unlink(missing_ok=True)
    meter = pyloudnorm.Meter(sr, block_size=min(0.4, len(wav) / sr))
    with warnings.catch_warnings():  # clipping is handled just below by the peak limit
        warnings.simplefilter("ignore", UserWarning)
        wav = pyloudnorm.normalize.loudness(wav, meter.integrated_loudness(wav), loudness_lufs)
    peak = float(np.max(np.abs(wav)))
    if peak > 0.89:  # keep 1 dB of headroom
        wav *= 0.89 / peak
    save_audio(wav_path, wav.astype(np.float32), sr)
    write_text_atomic(txt_path, text + "\n")
    return len(wav) / sr


def _render_batch(jobs: list[tuple], sample_rate: int, loudness_lufs: float) -> list[tuple[int, float]]:
    return [(i, _render_one(spec, text, wp, tp, sample_rate, loudness_lufs)) for i, spec, text, wp, tp in jobs]


def build_corpus(out: str | os.PathLike, config: CorpusConfig = CorpusConfig(), *, workers: int | None = None,
                 progress: bool = True) -> CorpusSummary:
    """Build (or reuse) the corpus in ``out``; see the module docstring for the layout.

    Re-running with the same configuration does nothing; an interrupted build
    resumes where it stopped. ``workers`` defaults to the number of CPU cores.
    """
    out = Path(out)
    t0 = time.time()
    stamp = out / "corpus.json"
    if stamp.is_file():
        done = json.loads(stamp.read_text())
        if done.get("fingerprint") == config.fingerprint():
            return _summarise(out, reused=True, seconds=0.0)
        raise FileExistsError(
            f"{out} already holds a corpus built with another configuration ({done.get('config')}); "
            "choose another --out or delete it"
        )
    check_synthesisers()
    if config.natural_speakers():
        check_piper(config.natural_target)
    specs = design_speakers(config.speakers, config.seed)
    roles = assign_speaker_sets(specs, config)
    if config.natural_speakers():  # one more target speaker, after the designed ones
        natural = natural_speaker(config.natural_target)
        specs.append(natural)
        roles[natural.name] = "target"
    if config.text == CorpusText.DIVERSE:
        prompts = diverse_prompts(config.prompts, config.seed)
    else:
        prompts = generate_prompts(config.prompts, config.seed)
    rows = plan_utterances(specs, prompts, roles, config)
    by_name = {s.name: s for s in specs}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "prompts.txt", "\n".join(prompts) + "\n")
    write_json_atomic(out / "speakers.json",
                      {s.name: {**s.to_dict(), "speaker_set": roles[s.name]} for s in specs})

    jobs = [(i, by_name[r["speaker"]], r["text"], out / r["audio"], out / "txt" / r["speaker"] / f"{r['utt_id']}.txt")
            for i, r in enumerate(rows)]
    workers = workers or os.cpu_count() or 1
    chunk = 16
    batches = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    # the natural voice is ~20 times slower per clip than flite and espeak-ng: start it first, in smaller
    # batches, so that it does not finish alone at the end (the audio does not depend on the order)
    slow = [j for j in jobs if j[1].engine == "piper"]
    if slow:
        fast = [j for j in jobs if j[1].engine != "piper"]
        batches = ([slow[i:i + 4] for i in range(0, len(slow), 4)]
                   + [fast[i:i + chunk] for i in range(0, len(fast), chunk)])
    bar = tqdm(total=len(jobs), desc="synthesising corpus", unit="utt", disable=not progress)
    if workers > 1:
        with process_pool(workers) as pool:
            futures = [pool.submit(_render_batch, b, config.sample_rate, config.loudness_lufs) for b in batches]
            for fut in as_completed(futures):
                done_batch = fut.result()
                for i, dur in done_batch:
                    rows[i]["duration"] = round(dur, 3)
                bar.update(len(done_batch))
    else:
        for b in batches:
            for i, dur in _render_batch(b, config.sample_rate, config.loudness_lufs):
                rows[i]["duration"] = round(dur, 3)
            bar.update(len(b))
    bar.close()
    write_manifest(out / "manifest.csv", rows)
    write_json_atomic(stamp, {"fingerprint": config.fingerprint(), "config": config.to_dict(),
                              "build_seconds": round(time.time() - t0, 1)})
    return _summarise(out, reused=False, seconds=time.time() - t0)


def write_manifest(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in MANIFEST_FIELDS})
    write_text_atomic(path, buf.getvalue())


def _summarise(out: Path, *, reused: bool, seconds: float) -> CorpusSummary:
    rows = read_manifest(out)
    speakers: dict[str, set] = {s: set() for s in SPEAKER_SETS}
    for r in rows:
        speakers[r["speaker_set"]].add(r["speaker"])
    size = sum((out / r["audio"]).stat().st_size for r in rows)
    hours = sum(float(r["duration"]) for r in rows) / 3600
    return CorpusSummary(str(out), {k: len(v) for k, v in speakers.items()}, len(rows), hours, size, seconds, reused)
