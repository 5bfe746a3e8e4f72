"""The main job on the embedded default: clone a held-out voice twice and compare forgetting.

1. build (or reuse) the default corpus;
2. load the shipped base model;
3. fit (or reuse) K-FAC of the pretraining data;
4. take a held-out target speaker's 20 adaptation clips and 8 held-out clips, and adapt with plain
   LoRA and with LoRA + K-FAC;
5. evaluate both adapters against the base model (``tts-adapt evaluate``: reports in
   ``<adapter>/eval``) and print target similarity / MCD against the MCD change of old speakers
   and of unseen voices.

The figures, their intervals and the timings are also written to ``<workdir>/quickstart.json`` (with the
device and the base model's fingerprint), so that runs on two machines or devices can be compared
(``python benchmarks/compare_quickstart.py A.json B.json``).
"""

from __future__ import annotations

import time
from pathlib import Path

from tts_adapt.evaluate.sweep_config import SweepConfig

QUICKSTART_STRATEGIES = ("lora", "kfac")
#: penalty strength of LoRA + K-FAC, in pretraining utterances: the K-FAC strategy's default (docs/results.md;
#: written out so that the command line reads it without importing PyTorch; tests/test_adapt.py checks the two agree)
QUICKSTART_LAM = 30000.0


def quickstart_config(lam: float = QUICKSTART_LAM, **overrides) -> SweepConfig:
    """The quickstart is a two-cell sweep: plain LoRA and LoRA + K-FAC at one λ, scored on fewer old and
    unseen speakers than a full sweep; ``overrides`` are other :class:`SweepConfig` fields."""
    return SweepConfig(**{"strategies": QUICKSTART_STRATEGIES, "lams": (lam,), "old_speakers": 8,
                          "unseen_speakers": 4, **overrides})


def _ci(r: dict, key: str) -> str:
    ci = r.get(f"{key}_ci") or [None, None]
    return "" if None in ci else f"[{ci[0]:+.2f},{ci[1]:+.2f}]"


def quickstart_table(rows: list[dict], seconds: dict[str, float]) -> str:
    """A plain-text table: the base model and each adapter, learning and forgetting side by side, the forgetting
    figures with their 95 % bootstrap intervals over utterances."""
    head = (f"{'model':<10} {'target sim':>10} {'target MCD':>10} {'target WER':>10} {'old dMCD [95 % CI]':>20} "
            f"{'old dWER':>8} {'unseen dMCD [95 % CI]':>22} {'time (s)':>8}")
    lines = [head, "-" * len(head)]
    first = rows[0]

    def pct(v, signed=False):
        return "-" if v is None else (f"{100 * v:+.1f}%" if signed else f"{100 * v:.0f}%")

    lines.append(f"{'base':<10} {first['base_target_similarity']:>10.3f} {first['base_target_mcd']:>10.2f} "
                 f"{pct(first.get('base_target_wer')):>10} {'+0.00':>20} {pct(0.0, True):>8} {'+0.00':>22} {'-':>8}")
    for r in rows:
        unseen = "-" if r["unseen_dmcd"] is None else f"{r['unseen_dmcd']:+.2f} {_ci(r, 'unseen_dmcd')}"
        lines.append(f"{r['cell']:<10} {r['target_similarity']:>10.3f} {r['target_mcd']:>10.2f} "
                     f"{pct(r.get('target_wer')):>10} {r['old_dmcd']:+.2f} {_ci(r, 'old_dmcd'):>14} "
                     f"{pct(r.get('old_dwer'), True):>8} {unseen:>22} {seconds.get(r['cell'], float('nan')):>8.0f}")
    return "\n".join(lines)


def run_quickstart(workdir: str | Path, config: SweepConfig | None = None, *, model=None,
                   progress: bool = True, echo=print, device: str | None = "auto") -> dict:
    """Run the quickstart in ``workdir`` with ``config`` (default: :func:`quickstart_config`) on ``device``
    (a ``--device`` value; ``auto``: a CUDA GPU when there is one)."""
    # imported here, not at the top: the CLI reads this module for its flags without importing PyTorch
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.data.corpus import CorpusConfig, build_corpus
    from tts_adapt.data.corpus.manifest import choose_target
    from tts_adapt.data.target_split import prepare_target
    from tts_adapt.evaluate.adapter import evaluate_adapter
    from tts_adapt.evaluate.scoring import Listeners, RealAudio
    from tts_adapt.evaluate.sweep import adapt_cell, cell_row, ensure_curvature
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.evaluate.model_card import training_steps
    from tts_adapt.device import describe_device, resolve_device
    from tts_adapt.io import write_json_atomic
    from tts_adapt.models.synthesis import default_model_dir

    config = config or quickstart_config()
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
         f"{len(base.speakers.names)} speakers, {training_steps(base.info)} training steps")

    t0 = time.time()
    echo(f"[3/5] K-FAC curvature of {config.curvature_utterances} pretraining utterances (fitted once, then reused)")
    kfac = ensure_curvature(model_dir, base, corpus, workdir, "kfac", num_utterances=config.curvature_utterances,
                            seed=config.seed, layout="auto", cache_dir=None, progress=progress,
                            echo=lambda m: echo(f"      {m}"), device=device)
    seconds["curvature"] = time.time() - t0

    target = choose_target(corpus)
    prepared = prepare_target(corpus, target, workdir / "target", clips=config.clips, heldout=config.heldout,
                              seed=config.seed)
    echo(f"[4/5] adapting to held-out speaker {target} from {prepared.clips} clips in {prepared.clips_dir}")
    adapters, runs = {}, {}
    for strategy, lam in config.cells():
        name = "lora" if strategy == "lora" else f"lora+{strategy}"
        cfg = AdaptConfig(strategy=strategy, lam=lam, steps=config.steps, rank=config.rank, lr=config.lr,
                          seed=config.seed)
        out = workdir / "adapters" / name
        run = adapt_cell(out, prepared.clips_dir, model_dir, cfg, kfac if strategy != "lora" else None, progress,
                         echo=lambda m: echo(f"      {m}"), device=device)
        echo(f"      {name}: {run['steps']} steps ({run['stopped']}) in {run['wall_seconds']:.0f} s -> {out}")
        seconds[name] = run["wall_seconds"]
        adapters[name], runs[name] = out, run

    echo(f"[5/5] evaluating: the target's {prepared.heldout} held-out clips, {config.old_speakers} old and "
         f"{config.unseen_speakers} unseen speakers, base model against each adapter")
    t0 = time.time()
    real, listeners = RealAudio(base.audio.sample_rate), Listeners.full()
    rows = []
    for name, path in adapters.items():
        report = evaluate_adapter(path, model=model_dir, old_speakers=config.old_speakers,
                                  unseen_speakers=config.unseen_speakers, per_speaker=config.per_speaker,
                                  real=real, listeners=listeners, progress=progress, device=device)
        rows.append(cell_row(name, runs[name]["config"]["strategy"], runs[name]["config"]["lam"], runs[name], report))
    seconds["evaluation"] = time.time() - t0
    echo("")
    echo(quickstart_table(rows, seconds))
    echo("")
    echo("target sim: speaker similarity to the target's real held-out clips (higher is better); MCD: "
         "mel-cepstral distortion in dB (lower is better); WER: word error rate of a speech recogniser "
         "(lower is better); old / unseen dMCD, dWER: change from the base model's on old (pretraining) speakers "
         "and on unseen voices spoken zero-shot (forgetting; closer to 0 is better). Every report, with "
         "pitch, naturalness and identification too: <adapter>/eval/report.md; what the measures mean: "
         "docs/measures.md.")
    total = time.time() - t_all
    echo(f"done in {total:.0f} s. Reports with spectrograms and wavs: {workdir / 'adapters'}/<model>/eval/ ; "
         f"listen side by side with: tts-adapt demo --adapters {workdir / 'adapters'}")
    result = {"rows": rows, "seconds": seconds, "total_seconds": total, "target": target,
              "device": describe_device(resolve_device(device)), "base_model": str(model_dir),
              "base_fingerprint": base.fingerprint(), "lam": config.lams[0], "steps": config.steps}
    write_json_atomic(workdir / "quickstart.json", result)
    return result
