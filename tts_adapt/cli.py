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


class CommandNotAvailable(RuntimeError):
    pass


# ----------------------------------------------------------------------------- corpus
def _corpus_config(args):
    """CorpusConfig from --config (its ``corpus:`` section) with command-line flags on top."""
    from tts_adapt.config import load_section
    from tts_adapt.data.corpus.config import CorpusConfig

    values = load_section(args.config, "corpus", CorpusConfig) if args.config else {}
    for f in dataclasses.fields(CorpusConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return CorpusConfig(**values)


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


# ----------------------------------------------------------------------------- quickstart
def cmd_quickstart(args) -> int:
    from tts_adapt.data.corpus import CorpusConfig, build_corpus
    from tts_adapt.data.corpus.check import check_speakers

    workdir = Path(args.workdir)
    t0 = time.time()
    print(f"[1/2] building the default corpus in {workdir / 'corpus'} (cached after the first run)")
    summary = build_corpus(workdir / "corpus", CorpusConfig(), progress=not args.quiet)
    print(f"      {summary}")
    print("[2/2] checking that the corpus speakers are distinct (real vs real speaker similarity)")
    check = check_speakers(workdir / "corpus", progress=not args.quiet)
    check.plot(workdir / "corpus" / "speaker_similarity.png")
    print("      " + str(check).replace("\n", "\n      "))
    print(f"\ndone in {time.time() - t0:.0f} s. Files:")
    print(f"  corpus audio and transcripts: {workdir / 'corpus' / 'wav'}, {workdir / 'corpus' / 'txt'}")
    print(f"  manifest (speaker, text, duration, split): {workdir / 'corpus' / 'manifest.csv'}")
    print(f"  speaker similarity plot: {workdir / 'corpus' / 'speaker_similarity.png'}")
    return 0


def not_available(name: str):
    def run(args) -> int:
        raise CommandNotAvailable(f"'tts-adapt {name}' is not available yet in tts_adapt {__version__}.")

    return run


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from tts_adapt.data.corpus.config import CorpusConfig

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
    b = csub.add_parser("build", help="synthesise the offline multi-speaker corpus (flite, espeak-ng, sox)",
                        description="Synthesise an offline multi-speaker English corpus in the VCTK layout "
                                    "with a manifest of speakers, texts, durations and splits. Cached: re-running "
                                    "the same configuration does nothing; an interrupted build resumes.")
    b.add_argument("--out", required=True, type=Path, help="output folder")
    b.add_argument("--config", type=Path, help="YAML file with a 'corpus:' section (flags override it)")
    for f in dataclasses.fields(CorpusConfig):  # one flag per config field; the dataclass is the source of truth
        b.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                       help=f"{f.metadata['help']} (default: {f.default})")
    b.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_corpus_build)
    c = csub.add_parser("check", help="real-vs-real speaker similarity of a built corpus",
                        description="Embed two disjoint halves of every speaker's recordings with resemblyzer and "
                                    "report whether each speaker is closer to itself than to any other.")
    c.add_argument("corpus", type=Path, help="corpus folder (with manifest.csv)")
    c.add_argument("--utterances-per-half", type=int, default=3, help="recordings per embedding (default: 3)")
    c.add_argument("--plot", type=Path, help="write the similarity matrix as a PNG image")
    c.add_argument("--strict", action="store_true", help="exit with status 1 when any speaker is confused")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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

    planned = {
        "pretrain": "train the multi-speaker base model on a corpus",
        "synthesize": "speak text with the base model or an adapter",
        "fit-curvature": "fit K-FAC / EK-FAC / diagonal Fisher curvature of the pretraining data",
        "adapt": "clone a voice: LoRA fine-tuning under a Laplace penalty",
        "evaluate": "measure learning (target voice) against forgetting (old voices)",
        "sweep": "run adapt + evaluate over strategies and penalty strengths",
        "demo": "start the Gradio demo",
    }
    for name, help_text in planned.items():
        p = sub.add_parser(name, help=f"{help_text} (not available yet)",
                           description=f"{help_text[0].upper()}{help_text[1:]}. Not available yet in "
                                       f"tts_adapt {__version__}.")
        p.set_defaults(func=not_available(name))

    q = sub.add_parser("quickstart", help="run the main job on the embedded default",
                       description="Build (or reuse) the default corpus in WORKDIR/corpus, check that its "
                                   "speakers are distinct, and say where everything is.")
    q.add_argument("--workdir", type=Path, default=Path(os.environ.get("TTS_ADAPT_WORKDIR", DEFAULT_WORKDIR)),
                   help=f"where corpora and runs are kept (default: ./{DEFAULT_WORKDIR} or $TTS_ADAPT_WORKDIR)")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CommandNotAvailable as err:
        print(f"tts-adapt: {err}", file=sys.stderr)
        return 2
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
