"""The main job on the embedded default: clone a held-out voice twice and compare forgetting.

1. build (or reuse) the default corpus;
2. load the shipped base model;
3. fit (or reuse) K-FAC of the pretraining data;
4. adapt to a held-out target speaker from about 20 clips with plain LoRA and with LoRA + K-FAC;
5. synthesise the target's and several old speakers' held-out sentences with the base model and
   both adapters, and print target similarity / MCD and the old speakers' MCD change.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

QUICKSTART_STRATEGIES = ("lora", "kfac")


@dataclass(frozen=True)
class QuickstartConfig:
    clips: int = 20  # target clips to adapt on
    lam: float = 1000.0  # penalty strength of LoRA + K-FAC, in pretraining utterances
    steps: int = 200
    rank: int = 8
    curvature_utterances: int = 400
    old_speakers: int = 4
    per_speaker: int = 2
    seed: int = 0


def _manifest(corpus: Path) -> list[dict]:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def choose_target(corpus: Path) -> str:
    """The corpus's flite ``slt`` target speaker if there is one, else its first target speaker."""
    targets = sorted({r["speaker"] for r in _manifest(corpus) if r["speaker_set"] == "target"})
    slt = [t for t in targets if "slt" in t]
    return (slt or targets)[0]


def choose_old_speakers(corpus: Path, count: int, known: list[str]) -> list[str]:
    """Pretraining speakers the model knows, alternating flite and espeak-ng voices (deterministic)."""
    pre = sorted({r["speaker"] for r in _manifest(corpus) if r["speaker_set"] == "pretrain"} & set(known))
    if not pre:
        raise ValueError(f"none of the pretraining speakers of {corpus} is a speaker of the base model; "
                         "the quickstart needs a model pretrained on this corpus")
    flite = [s for s in pre if s.startswith("fl")]
    espeak = [s for s in pre if not s.startswith("fl")]
    mixed = [s for pair in zip(flite, espeak) for s in pair] + flite[len(espeak):] + espeak[len(flite):]
    return mixed[:count]


def prepare_target_clips(corpus: Path, speaker: str, clips: int, out: Path) -> list[str]:
    """Copy ``clips`` training clips of ``speaker`` (wav + txt) into ``out``, as a user would provide them."""
    rows = [r for r in _manifest(corpus) if r["speaker"] == speaker and r["split"] == "train"][:clips]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in rows:
        wav = out / Path(r["audio"]).name
        if not wav.is_file():
            shutil.copyfile(corpus / r["audio"], wav)
        (out / f"{wav.stem}.txt").write_text(r["text"] + "\n", encoding="utf-8")
        paths.append(str(wav))
    return paths


def run_quickstart(workdir: str | Path, config: QuickstartConfig = QuickstartConfig(), *, model=None,
                   progress: bool = True, echo=print) -> dict:
    from tts_adapt.adapt.config import AdaptConfig
    from tts_adapt.adapt.train import adapt
    from tts_adapt.curvature.run import fit_curvature_file
    from tts_adapt.curvature.storage import Curvature, CurvatureFileError, CurvatureMismatchError
    from tts_adapt.data.corpus import CorpusConfig, build_corpus
    from tts_adapt.evaluate.forgetting import compare_models, table
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.synthesis import Synthesizer, default_model_dir

    workdir = Path(workdir)
    t_all = time.time()
    seconds: dict[str, float] = {}

    echo(f"[1/5] corpus in {workdir / 'corpus'} (built once, then reused)")
    t0 = time.time()
    corpus = workdir / "corpus"
    echo(f"      {build_corpus(corpus, CorpusConfig(), progress=progress)}")
    seconds["corpus"] = time.time() - t0

    model_dir = Path(model) if model else default_model_dir()
    base = TTSBackend.from_pretrained(model_dir)
    echo(f"[2/5] base model {model_dir}: {base.name}, {base.num_parameters() / 1e6:.2f} M parameters, "
         f"{len(base.speakers.names)} speakers, {base.info.get('steps', '?')} training steps")

    kfac = workdir / "kfac.safetensors"
    t0 = time.time()
    try:
        Curvature.load(kfac, base)
        echo(f"[3/5] reusing K-FAC curvature {kfac}")
    except (CurvatureFileError, CurvatureMismatchError):
        echo(f"[3/5] fitting K-FAC curvature on {config.curvature_utterances} pretraining utterances -> {kfac}")
        kfac.unlink(missing_ok=True)
        _, summary = fit_curvature_file(model_dir, corpus, kfac, num_utterances=config.curvature_utterances,
                                        seed=config.seed, progress=progress)
        echo(f"      {summary['layers']} layers in {summary['seconds']:.0f} s, {summary['size_mb']:.1f} MB")
    seconds["curvature"] = time.time() - t0

    target = choose_target(corpus)
    clips_dir = workdir / "target_clips" / target
    references = prepare_target_clips(corpus, target, config.clips, clips_dir)
    echo(f"[4/5] adapting to held-out speaker {target} from {len(references)} clips in {clips_dir}")
    adapters = {}
    for strategy in QUICKSTART_STRATEGIES:
        name = "lora" if strategy == "lora" else f"lora+{strategy}"
        out = workdir / "adapters" / name
        cfg = AdaptConfig(strategy=strategy, lam=0.0 if strategy == "lora" else config.lam, steps=config.steps,
                          rank=config.rank, seed=config.seed)
        run_json = out / "run.json"
        if run_json.is_file() and json.loads(run_json.read_text())["config"] == cfg.to_dict() and \
                json.loads(run_json.read_text())["base_model"] == str(model_dir):
            card = json.loads(run_json.read_text())
            echo(f"      {name}: reusing {out}")
        else:
            if out.exists():
                shutil.rmtree(out)
            card = adapt(clips_dir, out, model_dir, cfg, curvature=kfac if strategy != "lora" else None,
                         progress=progress)
            echo(f"      {name}: {card['steps']} steps ({card['stopped']}) in {card['wall_seconds']:.0f} s")
        seconds[name] = card["wall_seconds"]
        adapters[name] = out

    old = choose_old_speakers(corpus, config.old_speakers, base.speakers.names)
    echo(f"[5/5] synthesising the target's held-out sentences and those of old speakers {', '.join(old)}")
    t0 = time.time()
    synths = {"base": Synthesizer(model_dir)}
    synths.update({name: Synthesizer(model_dir, adapter=path) for name, path in adapters.items()})
    scores = compare_models(synths, corpus, target, references, old, per_speaker=config.per_speaker,
                            wav_dir=workdir / "wavs", progress=progress)
    seconds["evaluation"] = time.time() - t0
    echo("")
    echo(table(scores, seconds={k: v for k, v in seconds.items() if k in synths}))
    echo("")
    echo("target sim: speaker similarity to the real held-out clips (higher is better); MCD: mel-cepstral "
         "distortion in dB (lower is better); old dMCD: change of the old speakers' MCD from the base model "
         "(forgetting; closer to 0 is better).")
    total = time.time() - t_all
    echo(f"done in {total:.0f} s. Listen to {workdir / 'wavs'} (one folder per model and speaker); "
         f"adapters in {workdir / 'adapters'}.")
    return {"scores": [s.__dict__ for s in scores], "seconds": seconds, "total_seconds": total, "target": target,
            "old_speakers": old}
