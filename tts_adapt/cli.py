"""The ``tts-adapt`` command line: argument parsing only; the work is done by the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from tts_adapt import __version__

log = logging.getLogger("tts_adapt")

DEFAULT_WORKDIR = "work"
VOCODER_HELP = ("griffin-lim (the default), world (source-filter: voicing from the model's predicted pitch; "
                "FastPitch models) or a coqui-tts HiFi-GAN folder")


# ----------------------------------------------------------------------------- corpus
def add_config_flags(parser: argparse.ArgumentParser, config_cls) -> None:
    """One flag per field of a config dataclass; the dataclass is the source of truth for names,
    types, defaults and help."""
    parser.add_argument("--config", type=Path, help="YAML file with the settings below (flags override it)")
    for f in dataclasses.fields(config_cls):
        if isinstance(f.default, tuple):  # lists are given comma-separated; the config parses them
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=str, default=None,
                                help=f"{f.metadata['help']} (default: {','.join(map(str, f.default))})")
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=f.metadata.get("type", type(f.default)),
                            default=None, help=f"{f.metadata['help']}"
                                               + (f" (default: {f.default})" if f.default is not None else ""))


def add_layout_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default="auto", help="dataset layout (default: auto)")


def add_cache_flag(parser: argparse.ArgumentParser, what: str = "feature cache") -> None:
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"{what} (default: ~/.cache/tts_adapt)")


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_device_flags(parser: argparse.ArgumentParser, *, precision: bool = False, loader: bool = False) -> None:
    """``--device`` on every command that runs a model; ``--precision`` where one trains, ``--loader-workers``
    where batches stream from a corpus."""
    parser.add_argument("--device", default="auto",
                        help="where models run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, "
                             "cuda:N or mps (default: auto)")
    if precision:
        parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                            help="training arithmetic: fp32, or mixed precision bf16 / fp16 (fp16: GPUs, with a "
                                 "gradient scaler); penalties and curvature stay fp32 (default: fp32)")
    if loader:
        parser.add_argument("--loader-workers", type=int, default=0,
                            help="processes that make batches ahead of the model (DataLoader workers; pinned "
                                 "memory on a GPU). 0: in the main process (default: 0)")


def config_from_args(args, config_cls, section: str):
    """``config_cls`` from --config (its ``section:``) with command-line flags on top."""
    from tts_adapt.settings import load_section

    values = load_section(args.config, section, config_cls) if args.config else {}
    for f in dataclasses.fields(config_cls):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return config_cls(**values)


def _corpus_config(args):
    from tts_adapt.data.corpus.corpus_config import CorpusConfig

    return config_from_args(args, CorpusConfig, "corpus")


def cmd_corpus_build(args) -> int:
    from tts_adapt.data.corpus import build_corpus

    summary = build_corpus(args.out, _corpus_config(args), workers=args.workers, progress=not args.quiet)
    print(summary)
    return 0


def cmd_corpus_check(args) -> int:
    from tts_adapt.data.corpus.check import check_speakers

    result = check_speakers(args.corpus, args.utterances_per_half, progress=not args.quiet)
    print(result)
    if args.plot:
        result.plot(args.plot)
        print(f"similarity matrix plotted to {args.plot}")
    return 0 if not result.confusions() or not args.strict else 1


def cmd_corpus_inspect(args) -> int:
    from tts_adapt.data.readers import read_dataset
    from tts_adapt.data.validation import AudioChecks

    checks = AudioChecks(sample_rate=args.sample_rate, expected_sample_rate=args.expect_sample_rate,
                         expected_channels=args.expect_channels)
    utts, report = read_dataset(args.data, args.layout, on_bad_input=args.on_bad_input, checks=checks,
                                workers=args.workers)
    speakers = sorted({u.speaker for u in utts})
    hours = sum(u.duration or 0.0 for u in utts) / 3600
    print(f"{args.data}: {len(utts)} usable utterances from {len(speakers)} speakers, {hours:.2f} h")
    print(report.summary())
    return 0


# ----------------------------------------------------------------------------- pretrain
def cmd_pretrain(args) -> int:
    from tts_adapt.models.pretrain import PretrainConfig, pretrain

    config = config_from_args(args, PretrainConfig, "pretrain")
    backend = pretrain(args.data, args.out, config, layout=args.layout, cache_dir=args.cache_dir,
                       workers=args.workers, progress=not args.quiet, stop_after=args.stop_after,
                       max_minutes=args.max_minutes, device=args.device, precision=args.precision,
                       loader_workers=args.loader_workers)
    print(f"model saved in {args.out} ({backend.num_parameters() / 1e6:.2f} M parameters, "
          f"step {backend.info.get('steps')}); training log: {Path(args.out) / 'train_log.csv'}")
    return 0


# ----------------------------------------------------------------------------- synthesize
def cmd_synthesize(args) -> int:
    from tts_adapt.adapt.adapter import adapted_model
    from tts_adapt.data.audio import save_audio
    from tts_adapt.models.synthesis import Synthesizer, check_length_scale, sentences_to_speak

    if not args.list_speakers:  # before the model is loaded
        check_length_scale(args.length_scale, "--length-scale")
        if args.text is not None:
            sentences_to_speak(args.text)
    model = args.model if args.adapter is None else adapted_model(args.adapter, args.model)
    synth = Synthesizer(model, vocoder=args.vocoder, device=args.device)
    if args.list_speakers:
        table = synth.backend.speakers
        print(f"{len(table.names)} speakers ({table.kind}): " + " ".join(table.names))
        return 0
    if args.text is None or args.out is None:
        raise ValueError("--text and --out are required (or --list-speakers)")
    t0 = time.time()
    wav = synth.speak(args.text, speaker=args.speaker, speaker_wavs=args.speaker_wav, length_scale=args.length_scale)
    save_audio(args.out, wav, synth.sample_rate)
    seconds = len(wav) / synth.sample_rate
    print(f"wrote {args.out}: {seconds:.2f} s of audio in {time.time() - t0:.2f} s")
    return 0


# ----------------------------------------------------------------------------- fit-curvature
def cmd_fit_curvature(args) -> int:
    from tts_adapt.curvature.curvature_config import CurvatureConfig
    from tts_adapt.curvature.run import fit_curvature_file

    c = config_from_args(args, CurvatureConfig, "curvature")
    lora_point = None
    if c.lora_setup() is not None:  # lalora-*: the LoRA point to fit at
        from tts_adapt.adapt.strategies.lalora import LoraPointBuilder

        lora_point = LoraPointBuilder.from_setup(c.lora_setup(), batch_size=c.batch_size, progress=not args.quiet)
    curvature, summary = fit_curvature_file(
        args.model, args.data, args.out, method=c.method, fisher=c.fisher, targets=args.targets,
        num_utterances=c.num_utterances, batch_size=c.batch_size, seed=c.seed, layout=args.layout,
        cache_dir=args.cache_dir, workers=args.workers, progress=not args.quiet, device=args.device,
        loader_workers=args.loader_workers, lora_point=lora_point)
    if summary["size_mb"] is not None:
        print(f"{curvature.method} ({curvature.fisher} Fisher) of {summary['layers']} layers on "
              f"{summary['utterances']} utterances in {summary['seconds']:.0f} s "
              f"({summary['utterances_per_s']:.1f} utt/s); {args.out}: {summary['size_mb']:.1f} MB")
    return 0


# ----------------------------------------------------------------------------- adapt
def cmd_adapt(args) -> int:
    from tts_adapt.adapt.train import AdaptConfig, adapt

    config = config_from_args(args, AdaptConfig, "adapt")
    run = adapt(args.target_dir, args.out, args.model, config, curvature=args.curvature, targets=args.targets,
                resume=args.resume, val_dir=args.val_dir, cache_dir=args.cache_dir, progress=not args.quiet,
                min_clips=args.min_clips, max_clips=args.max_clips, device=args.device, precision=args.precision,
                replay_data=args.replay_data, init_adapter=args.init_adapter)
    print(f"adapter saved in {args.out}: {run['steps']} steps ({run['stopped']}), best validation loss "
          f"{run['best_val_loss']:.4f}, {run['wall_seconds']:.0f} s")
    if "selective" in run:  # the selective strategy's gates
        gates = run["selective"]
        print(f"active LoRA blocks: {gates['active_blocks']} of {gates['blocks']} "
              f"({100 * gates['active_fraction']:.0f} %); the adapter holds the active ones")
    return 0


# ----------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    if args.adapter is not None:
        from tts_adapt.evaluate.adapter import evaluate_adapter, to_markdown

        report = evaluate_adapter(args.adapter, args.out, model=args.model, target_dir=args.target_dir,
                                  data=args.data, layout=args.layout, old_speakers=args.old_speakers,
                                  unseen_speakers=args.unseen_speakers, per_speaker=args.per_speaker or 4,
                                  images=args.images, cache_dir=args.cache_dir, progress=not args.quiet,
                                  device=args.device)
        out = Path(args.out) if args.out else Path(args.adapter) / "eval"
        print(to_markdown(report))
        print(f"report written to {out / 'report.json'} and {out / 'report.md'}")
        return 0
    from tts_adapt.evaluate.report import evaluate_base_model

    if args.data is None or args.out is None:
        raise ValueError("scoring the model's voices needs --data (the embedded corpus) and --out; "
                         "with --adapter DIR, the adapter is evaluated against the base model")
    report = evaluate_base_model(args.model, args.data, args.out, per_speaker=args.per_speaker or 3,
                                 speaker_sets=tuple(args.sets.split(",")), max_speakers=args.max_speakers,
                                 progress=not args.quiet, vocoder=args.vocoder, device=args.device)
    print(report["markdown"])
    if args.write_card:
        from tts_adapt.evaluate.model_card import write_model_card
        from tts_adapt.models.synthesis import default_model_dir

        card = write_model_card(args.model or default_model_dir(), args.out)
        print(f"model card written to {card}")
    print(f"report written to {Path(args.out) / 'report.json'} and {Path(args.out) / 'report.md'}")
    return 0


# ----------------------------------------------------------------------------- prepare-target, sweep
def cmd_prepare_target(args) -> int:
    from tts_adapt.data.corpus.manifest import choose_target
    from tts_adapt.data.target_split import TargetConfig, prepare_target

    c = config_from_args(args, TargetConfig, "target")
    speaker = c.speaker
    if not speaker:
        if not (Path(args.data) / "manifest.csv").is_file():
            raise ValueError("give the speaker to clone: --speaker, or 'speaker:' in the 'target:' section of --config")
        speaker = choose_target(Path(args.data))  # the embedded corpus names its target speakers
    t = prepare_target(args.data, speaker, args.out, clips=c.clips, heldout=c.heldout, layout=args.layout,
                       seed=c.seed)
    print(f"{t.speaker}: {t.clips} adaptation clips in {t.clips_dir}, {t.heldout} held-out clips in {t.heldout_dir}")
    return 0


def cmd_sweep(args) -> int:
    from tts_adapt.evaluate.sweep import SweepConfig, run_sweep

    config = config_from_args(args, SweepConfig, "sweep")
    sequence = None
    if args.sequence is not None:
        from tts_adapt.evaluate.continual import parse_sequence

        sequence = parse_sequence(args.sequence)
        given = [f for f in ("target_dir", "heldout_dir", "target_speaker") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--sequence clones speakers of --data; --{given[0].replace('_', '-')} does not apply")
    data = args.data
    if data is None and args.target_dir is None:  # the embedded default, built (or reused) in the workdir
        from tts_adapt.data.corpus import CorpusConfig, build_corpus

        data = args.workdir / "corpus"
        print(build_corpus(data, CorpusConfig(), progress=not args.quiet))
    if sequence is not None:
        return _sweep_sequence(args, config, sequence, data)
    summary = run_sweep(args.out, config, model=args.model, data=data, layout=args.layout,
                        target_speaker=args.target_speaker, target_dir=args.target_dir, heldout_dir=args.heldout_dir,
                        curvature_data=args.curvature_data, replay_data=args.replay_data, cache_dir=args.cache_dir,
                        publish=args.publish,
                        progress=not args.quiet, device=args.device, precision=args.precision)
    from tts_adapt.evaluate.sweep import to_markdown

    print(to_markdown(summary["cells"], summary))
    print(f"table: {Path(args.out) / 'table.md'} (and .csv); plot: {Path(args.out) / 'pareto.png'}; "
          f"{summary['seconds']:.0f} s")
    return 0


def _sweep_sequence(args, config, sequence, data) -> int:
    """``sweep --sequence``: the continual benchmark with the sweep's settings; λ is --lams' first value when
    given (flag or --config), else each strategy's default."""
    from tts_adapt.evaluate.continual import run_sequence, to_markdown
    from tts_adapt.evaluate.sweep_config import DEFAULT_LAM, SweepConfig
    from tts_adapt.settings import load_section

    lams_given = args.lams is not None or (args.config is not None
                                           and "lams" in load_section(args.config, "sweep", SweepConfig))
    lam = config.lams[0] if lams_given and config.lams and config.lams[0] != DEFAULT_LAM else None
    summary = run_sequence(args.out, config, sequence, lam=lam,
                           model=args.model, data=data, layout=args.layout, curvature_data=args.curvature_data,
                           replay_data=args.replay_data, cache_dir=args.cache_dir, publish=args.publish,
                           progress=not args.quiet, device=args.device, precision=args.precision)
    print(to_markdown(summary["methods"], summary))
    print(f"table: {Path(args.out) / 'sequence.md'} (and .csv, .json); plot: {Path(args.out) / 'sequence.png'}; "
          f"{summary['seconds']:.0f} s")
    return 0


# ----------------------------------------------------------------------------- bank
def cmd_bank_list(args) -> int:
    import json

    from tts_adapt.adapt.bank import AdapterBank

    entries = AdapterBank(args.bank).entries()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2, ensure_ascii=False))
        return 0
    if not entries:
        print(f"{args.bank}: no adapters")
        return 0
    rows = [("name", "strategy", "λ", "rank", "base model", "size")]
    for e in entries:
        strategy = e.strategy or "?"
        if e.merged_from:
            strategy += f" of {'+'.join(e.merged_from)}"
        base = f"{e.base_model or '?'} ({e.base_fingerprint[:12] or 'unrecorded'})"
        rows.append((e.name, strategy, "-" if e.lam is None else f"{e.lam:g}", str(e.rank or "?"), base,
                     f"{e.size_bytes / 1e6:.2f} MB"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def cmd_bank_add(args) -> int:
    from tts_adapt.adapt.bank import AdapterBank

    adapter = AdapterBank(args.bank).add(args.name, args.adapter_dir, model=args.model)
    print(f"added {adapter.name} to {args.bank}: {adapter.settings}")
    return 0


def cmd_bank_remove(args) -> int:
    from tts_adapt.adapt.bank import AdapterBank

    path = AdapterBank(args.bank).remove(args.name)
    print(f"removed {args.name} ({path})")
    return 0


def cmd_bank_merge(args) -> int:
    from tts_adapt.adapt.bank import AdapterBank

    record = AdapterBank(args.bank).merge(args.voices, args.out, combination=args.combination, model=args.model,
                                          density=args.density, allow_inexact=args.allow_inexact, seed=args.seed)
    merge = record["merge"]
    voices = " + ".join(f"{v['weight']:g} · {v['name']}" for v in merge["voices"])
    exactness = ("exactly the weighted sum of the updates" if merge["exact"] else
                 f"NOT the weighted sum of the updates (off by {merge['max_relative_deviation']:.3g} of its "
                 f"largest entry)")
    print(f"merged adapter saved in {args.out}: ΔW = {voices} ({merge['combination']}, rank "
          f"{record['config']['rank']}; {exactness}); its voice is the speaker 'target'")
    return 0


# ----------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from tts_adapt.demo.app import run_demo

    print(f"loading the base model and the adapters of {args.adapters} ...", flush=True)
    run_demo(args.host, args.port, args.model, args.adapters, args.curvature, min_clips=args.min_clips,
             max_steps=args.max_steps, vocoder=args.vocoder, device=args.device, replay_data=args.replay_data)
    return 0


# ----------------------------------------------------------------------------- quickstart
def cmd_quickstart(args) -> int:
    from tts_adapt.quickstart import quickstart_config, run_quickstart

    config = quickstart_config(args.lam, steps=args.steps, clips=args.clips)
    run_quickstart(args.workdir, config, model=args.model, progress=not args.quiet, device=args.device)
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from tts_adapt.data.corpus.corpus_config import CorpusConfig

    parser = argparse.ArgumentParser(
        prog="tts-adapt",
        description="Clone a voice from a few recordings: LoRA fine-tuning of a multi-speaker TTS model "
                    "under a Laplace penalty that keeps the voices it already had.",
    )
    parser.add_argument("--version", action="version", version=f"tts_adapt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # corpus
    p = sub.add_parser("corpus", help="build, check or inspect speech corpora",
                       description="Build the embedded multi-speaker corpus, check its speakers, or inspect a dataset.")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    b = csub.add_parser("build",
                        help="synthesise the offline multi-speaker corpus (flite, espeak-ng, sox; optionally Piper)",
                        description="Synthesise an offline multi-speaker English corpus in the VCTK layout "
                                    "with a manifest of speakers, texts, durations and splits. Cached: re-running "
                                    "the same configuration does nothing; an interrupted build resumes.")
    b.add_argument("--out", required=True, type=Path, help="output folder")
    add_config_flags(b, CorpusConfig)
    b.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    add_quiet_flag(b)
    b.set_defaults(func=cmd_corpus_build)
    c = csub.add_parser("check", help="real-vs-real speaker similarity of a built corpus",
                        description="Embed two disjoint halves of every speaker's recordings with resemblyzer and "
                                    "report whether each speaker is closer to itself than to any other.")
    c.add_argument("corpus", type=Path, help="corpus folder (with manifest.csv)")
    c.add_argument("--utterances-per-half", type=int, default=3, help="recordings per embedding (default: 3)")
    c.add_argument("--plot", type=Path, help="write the similarity matrix as a PNG image")
    c.add_argument("--strict", action="store_true", help="exit with status 1 when any speaker is confused")
    add_quiet_flag(c)
    c.set_defaults(func=cmd_corpus_check)
    i = csub.add_parser("inspect", help="read a dataset (VCTK, LibriTTS, LJSpeech, custom) and report bad files",
                        description="Read a dataset in any supported layout, check every file, and summarise "
                                    "what is usable and what would be skipped and why.")
    i.add_argument("--data", required=True, type=Path, help="dataset root folder")
    i.add_argument("--layout", default="auto", help="vctk, libritts, ljspeech, custom, tts_adapt or auto")
    i.add_argument("--on-bad-input", choices=["skip", "error"], default="skip",
                   help="skip bad files and summarise (default), or stop at the first")
    i.add_argument("--sample-rate", type=int, default=16000, help="rate audio is converted to (default: 16000)")
    i.add_argument("--expect-sample-rate", type=int, default=None,
                   help="treat files at any other rate as bad input (default: resample with a note)")
    i.add_argument("--expect-channels", type=int, default=None,
                   help="treat files with another channel count as bad input (default: down-mix with a note)")
    i.add_argument("--workers", type=int, default=1, help="parallel processes for checking audio")
    i.set_defaults(func=cmd_corpus_inspect)

    from tts_adapt.models.pretrain_config import PretrainConfig

    p = sub.add_parser("pretrain", help="train the multi-speaker base model on a corpus",
                       description="Train the multi-speaker base model. Checkpoints regularly; re-running "
                                   "the same command resumes exactly where it stopped. Data-parallel under "
                                   "torchrun (gloo on CPUs, NCCL on GPUs): torchrun --nproc_per_node 2 -m "
                                   "tts_adapt.cli pretrain ...")
    p.add_argument("--data", required=True, type=Path, help="dataset root (the embedded corpus or any layout)")
    p.add_argument("--out", required=True, type=Path, help="model / run folder")
    add_layout_flag(p)
    add_cache_flag(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for feature extraction")
    p.add_argument("--stop-after", type=int, default=None, help="end this sitting after N steps (resumable)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="end this sitting after M minutes of training (resumable; equal-time pilots)")
    add_quiet_flag(p)
    add_config_flags(p, PretrainConfig)
    add_device_flags(p, precision=True, loader=True)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("synthesize", help="speak text with the base model or an adapter",
                       description="Speak text in a voice of the model (--speaker) or, zero-shot, in the voice of "
                                   "reference recordings (--speaker-wav). Long text is split into sentences.")
    p.add_argument("--text", help="text to speak")
    p.add_argument("--out", type=Path, help="output WAV file")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped base model)")
    voice = p.add_mutually_exclusive_group()
    voice.add_argument("--speaker", help="a speaker of the model (see --list-speakers)")
    voice.add_argument("--speaker-wav", type=Path, nargs="+", help="reference recordings of a voice (zero-shot)")
    p.add_argument("--adapter", type=Path, default=None,
                   help="adapter folder from tts-adapt adapt; its voice is the speaker 'target' (the default)")
    p.add_argument("--vocoder", default=None, help=VOCODER_HELP)
    p.add_argument("--length-scale", type=float, default=1.0,
                   help="speaking-rate factor from 0.25 to 4, >1 slower (default: 1)")
    p.add_argument("--list-speakers", action="store_true", help="list the model's speakers and exit")
    add_device_flags(p)
    p.set_defaults(func=cmd_synthesize)

    from tts_adapt.curvature.curvature_config import CurvatureConfig
    from tts_adapt.data.target_split import TargetConfig

    p = sub.add_parser("fit-curvature", help="fit K-FAC / EK-FAC / diagonal Fisher of the pretraining data",
                       description="Fit the curvature of the layers LoRA adapts on N pretraining utterances "
                                   "(streamed from disk; memory does not grow with N) and save it as safetensors "
                                   "with a fingerprint of the model. Interrupted fits resume. Data-parallel under "
                                   "torchrun: torchrun --nproc_per_node 2 -m tts_adapt.cli fit-curvature ...")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped base model)")
    p.add_argument("--data", required=True, type=Path, help="pretraining data (the embedded corpus or any layout)")
    p.add_argument("--out", required=True, type=Path, help="curvature file to write (.safetensors)")
    p.add_argument("--targets", nargs="+", default=None, help="module names (default: the backend's LoRA targets)")
    add_layout_flag(p)
    add_cache_flag(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for feature extraction")
    add_quiet_flag(p)
    add_config_flags(p, CurvatureConfig)
    add_device_flags(p, loader=True)
    p.set_defaults(func=cmd_fit_curvature)

    from tts_adapt.adapt.adapt_config import MAX_CLIPS, MIN_CLIPS, AdaptConfig

    p = sub.add_parser("adapt", help="clone a voice: LoRA fine-tuning under a Laplace penalty",
                       description="Fine-tune LoRA adapters of the base model on 10-50 clips of a target speaker "
                                   "(--max-clips for more; *.wav with same-named *.txt, or metadata.csv), with "
                                   "loss = TTS loss + "
                                   "(lam/2) * penalty. Held-out clips are split off for validation and early "
                                   "stopping. --resume continues an interrupted run exactly.")
    p.add_argument("--target-dir", required=True, type=Path, help="folder of the target speaker's clips")
    p.add_argument("--out", required=True, type=Path, help="adapter folder")
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: the shipped model)")
    p.add_argument("--curvature", type=Path, default=None,
                   help="curvature file (for diag, kfac, ekfac; lalora-kfac or lalora-diag for lalora)")
    p.add_argument("--replay-data", type=Path, default=None,
                   help="the base model's pretraining corpus, whose utterances ilora replays (e.g. work/corpus)")
    p.add_argument("--targets", nargs="+", default=None,
                   help="module names to adapt (default: those of the curvature file, else the backend's)")
    p.add_argument("--val-dir", type=Path, default=None, help="held-out clips (default: split off the target's)")
    p.add_argument("--min-clips", type=int, default=MIN_CLIPS,
                   help=f"fewest usable clips accepted (default: {MIN_CLIPS})")
    p.add_argument("--max-clips", type=int, default=MAX_CLIPS,
                   help=f"use at most the first N clips of --target-dir (default: {MAX_CLIPS})")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--init-adapter", type=Path, default=None,
                   help="an adapter folder of the same base model, rank and layers to continue training from (its "
                        "LoRA weights; the new target keeps its own conditioning; docs/continual.md)")
    add_cache_flag(p)
    add_quiet_flag(p)
    add_config_flags(p, AdaptConfig)
    add_device_flags(p, precision=True)
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("evaluate", help="measure an adapter's learning and forgetting, or score a model's voices",
                       description="With --adapter: synthesise the target's held-out clips and held-out sentences "
                                   "of old and unseen speakers with the base model and the adapted model, and "
                                   "report for both, for the real recordings where it applies, and as the change: "
                                   "MCD-DTW, pitch error in cents with gross pitch and voicing errors, word and "
                                   "character error rates of a speech recogniser, DNSMOS, speaker similarity, "
                                   "speaker identification among all voices, and the teacher-forced mel loss, each "
                                   "with a 95 % bootstrap interval (report.json, report.md, report.png, "
                                   "mel-spectrogram images). Without: score every voice of the embedded corpus "
                                   "(MCD-DTW, similarity against all other speakers) for the model card.")
    p.add_argument("--model", type=Path, default=None,
                   help="base model folder (default: the adapter's base model, else the shipped model)")
    p.add_argument("--adapter", type=Path, default=None, help="adapter folder (tts-adapt adapt --out)")
    p.add_argument("--target-dir", type=Path, default=None,
                   help="held-out clips of the target speaker (default: from tts-adapt prepare-target)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset of the old and unseen speakers (any layout; the embedded corpus for the card)")
    add_layout_flag(p)
    p.add_argument("--out", type=Path, default=None, help="report folder (default with --adapter: ADAPTER/eval)")
    p.add_argument("--per-speaker", type=int, default=None,
                   help="held-out utterances per speaker (default: 4 with --adapter, else 3)")
    p.add_argument("--old-speakers", type=int, default=8, help="old speakers to measure forgetting on (default: 8)")
    p.add_argument("--unseen-speakers", type=int, default=6, help="unseen voices, zero-shot (default: 6)")
    p.add_argument("--images", type=int, default=3, help="mel-spectrogram comparison images (default: 3)")
    add_cache_flag(p, "feature and score cache")
    p.add_argument("--sets", default="pretrain,unseen", help="without --adapter: speaker sets to score")
    p.add_argument("--max-speakers", type=int, default=None, help="without --adapter: only the first N speakers")
    p.add_argument("--vocoder", default=None, help="without --adapter: " + VOCODER_HELP)
    p.add_argument("--write-card", action="store_true",
                   help="without --adapter: also write MODEL_CARD.md (with these scores) into the model folder")
    add_quiet_flag(p)
    add_device_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("prepare-target", help="take a speaker's adaptation and held-out clips from a dataset",
                       description="Write a speaker's adaptation clips (OUT/clips) and disjoint held-out clips "
                                   "(OUT/heldout) from any supported dataset, as wav + txt, for adapt and evaluate.")
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--out", required=True, type=Path, help="target folder")
    add_layout_flag(p)
    add_config_flags(p, TargetConfig)
    p.set_defaults(func=cmd_prepare_target)

    from tts_adapt.evaluate.sweep_config import SweepConfig

    p = sub.add_parser("sweep", help="adapt + evaluate over strategies and penalty strengths",
                       description="Adapt and evaluate every (strategy, λ) cell, each cached and resumable, and "
                                   "write table.csv, table.md, summary.json and pareto.png (forgetting against "
                                   "learning, one curve per strategy). Without --data / --target-dir: the "
                                   "embedded default (corpus built or reused in --workdir).")
    p.add_argument("--out", required=True, type=Path, help="sweep folder")
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: the shipped model)")
    p.add_argument("--data", type=Path, default=None, help="dataset of the target, old and unseen speakers")
    add_layout_flag(p)
    p.add_argument("--target-speaker", default=None,
                   help="speaker of --data to clone (default: the corpus's target); several, comma-separated, or "
                        "'all' (the corpus's target set): each is swept into OUT/<speaker>/ and the lines are "
                        "pooled over targets and seeds in OUT")
    p.add_argument("--target-dir", type=Path, default=None, help="your own adaptation clips instead")
    p.add_argument("--heldout-dir", type=Path, default=None, help="held-out clips of the same speaker (with --target-dir)")
    p.add_argument("--curvature-data", type=Path, default=None, help="pretraining data for the curvature (default: --data)")
    p.add_argument("--replay-data", type=Path, default=None,
                   help="pretraining data ilora replays (default: --curvature-data, else --data)")
    p.add_argument("--sequence", default=None, metavar="SPK1,SPK2,...",
                   help="the continual benchmark instead: clone these speakers of --data one after another with "
                        "each strategy continued and with one isolated adapter per voice, measuring every voice "
                        "after every stage (sequence.md, sequence.png; docs/continual.md)")
    p.add_argument("--publish", type=Path, default=None,
                   help="also copy table.csv, table.md, summary.json and pareto.png (with --sequence: sequence.csv, "
                        ".md, .json, .png and stages.csv) into this folder (e.g. docs/sweep)")
    add_cache_flag(p, "feature and score cache")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TTS_ADAPT_WORKDIR", DEFAULT_WORKDIR)),
                   help=f"where the embedded corpus is kept (default: ./{DEFAULT_WORKDIR} or $TTS_ADAPT_WORKDIR)")
    add_quiet_flag(p)
    add_config_flags(p, SweepConfig)
    add_device_flags(p, precision=True)
    p.set_defaults(func=cmd_sweep)

    workdir = Path(os.environ.get("TTS_ADAPT_WORKDIR", DEFAULT_WORKDIR))
    p = sub.add_parser("demo", help="start the Gradio demo: compare adapters by ear, clone a voice",
                       description="Serve the Gradio demo: hear the base model and every adapter of the bank side "
                                   "by side (target voices, old speakers, or a reference clip zero-shot), and clone "
                                   "a voice from uploaded or recorded clips in a queued background run. Binds to "
                                   "localhost unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: the shipped model)")
    p.add_argument("--adapters", type=Path, default=workdir / "adapters",
                   help="adapter bank: one folder per adapter; clones are saved here "
                        f"(default: {workdir / 'adapters'})")
    p.add_argument("--curvature", type=Path, nargs="+", default=[workdir / "kfac.safetensors"],
                   help="curvature files or folders for the diag / kfac / ekfac strategies "
                        f"(default: {workdir / 'kfac.safetensors'}, written by quickstart)")
    p.add_argument("--replay-data", type=Path, default=workdir / "corpus",
                   help="pretraining corpus the ilora strategy replays "
                        f"(default: {workdir / 'corpus'}, built by quickstart)")
    p.add_argument("--min-clips", type=int, default=5, help="fewest clips a clone accepts (default: 5)")
    p.add_argument("--max-steps", type=int, default=1000, help="most adaptation steps a clone may ask (default: 1000)")
    p.add_argument("--vocoder", default=None, help=VOCODER_HELP)
    add_device_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bank", help="list, add, remove and merge the adapters of a bank (one per voice)",
                       description="An adapter bank is a folder with one adapter folder per voice, all of one frozen "
                                   "base model (the demo's --adapters folder). Adding or removing a voice never "
                                   "touches the others; merge writes a new adapter whose weight update is a "
                                   "weighted sum of the voices' (task arithmetic).")
    bsub = p.add_subparsers(dest="bank_command", metavar="ACTION", required=True)

    def bank_parser(name: str, **kwargs) -> argparse.ArgumentParser:
        b = bsub.add_parser(name, **kwargs)
        b.add_argument("--bank", type=Path, default=workdir / "adapters",
                       help=f"bank folder (default: {workdir / 'adapters'}, the demo's)")
        return b

    b = bank_parser("list", help="the bank's adapters: name, strategy, λ, rank, base model, size",
                    description="List the bank's adapters as a table, or as JSON with --json.")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.set_defaults(func=cmd_bank_list)
    b = bank_parser("add", help="copy an adapter into the bank under a name",
                    description="Copy an adapter folder (tts-adapt adapt --out, or bank merge --out) into the bank "
                                "as NAME, atomically. Refused: a taken name, a folder that is not an adapter, an "
                                "adapter of another base model than the bank's.")
    b.add_argument("name", help="the voice's name in the bank (letters, digits, '_', '+', '.', '-')")
    b.add_argument("adapter_dir", type=Path, help="adapter folder to copy in")
    b.add_argument("--model", type=Path, default=None,
                   help="also check the adapter against this base model folder (default: against the bank's "
                        "other adapters)")
    b.set_defaults(func=cmd_bank_add)
    b = bank_parser("remove", help="delete an adapter from the bank",
                    description="Delete the adapter NAME from the bank; the other adapters are not touched.")
    b.add_argument("name", help="the adapter to delete")
    b.set_defaults(func=cmd_bank_remove)
    b = bank_parser("merge", help="write a new adapter that speaks a weighted combination of voices",
                    description="Merge voices of the bank by task arithmetic through peft's add_weighted_adapter: "
                                "the new adapter's update is ΔW = w1 ΔW1 + w2 ΔW2 + ... (exactly so with the "
                                "default combination cat), and its speaker conditioning is the voices' weighted "
                                "mean. Load it like any adapter (synthesize --adapter OUT), or bank add it.")
    b.add_argument("voices", help="voices and weights, NAME1=w1,NAME2=w2 (weights may be negative; their sum "
                                  "must be positive)")
    b.add_argument("--out", required=True, type=Path, help="folder for the merged adapter (must not exist)")
    b.add_argument("--combination", default="cat",
                   help="peft's combination: cat (the default; exact) or linear, ties, dare_linear, dare_ties, "
                        "magnitude_prune and the svd ones, which are not the weighted sum and are refused unless "
                        "--allow-inexact (the svd ones always on Conv1d layers); see docs/bank.md")
    b.add_argument("--density", type=float, default=None,
                   help="fraction of factor entries kept, for ties, dare and magnitude_prune")
    b.add_argument("--allow-inexact", action="store_true",
                   help="run a combination that is not the weighted sum of the updates (with a warning)")
    b.add_argument("--seed", type=int, default=0, help="seed of dare's random drop (default: 0)")
    b.add_argument("--model", type=Path, default=None,
                   help="base model folder (default: the one the first voice's run.json names, else the shipped one)")
    b.set_defaults(func=cmd_bank_merge)

    from tts_adapt.evaluate.sweep_config import SweepConfig
    from tts_adapt.quickstart import QUICKSTART_LAM

    q = sub.add_parser("quickstart", help="run the main job on the embedded default",
                       description="Build (or reuse) the default corpus, fit (or reuse) K-FAC of the shipped base "
                                   "model, clone a held-out voice from about 20 clips with plain LoRA and with "
                                   "LoRA + K-FAC, and compare target similarity and the forgetting of old "
                                   "voices. Every stage's result is reused on the next run.")
    q.add_argument("--model", type=Path, default=None, help="base model folder (default: the shipped model)")
    q.add_argument("--lam", type=float, default=QUICKSTART_LAM,
                   help=f"penalty strength of LoRA + K-FAC (default: {QUICKSTART_LAM:g})")
    q.add_argument("--steps", type=int, default=SweepConfig.steps,
                   help=f"adaptation steps (default: {SweepConfig.steps})")
    q.add_argument("--clips", type=int, default=SweepConfig.clips,
                   help=f"target clips to adapt on (default: {SweepConfig.clips})")
    q.add_argument("--workdir", type=Path, default=Path(os.environ.get("TTS_ADAPT_WORKDIR", DEFAULT_WORKDIR)),
                   help=f"where corpora and runs are kept (default: ./{DEFAULT_WORKDIR} or $TTS_ADAPT_WORKDIR)")
    add_quiet_flag(q)
    add_device_flags(q)
    q.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("tts-adapt: interrupted; finished files are kept and the next run resumes from them", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as err:
        if args.debug:
            raise
        print(f"tts-adapt {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
