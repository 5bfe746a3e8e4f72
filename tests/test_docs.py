"""The documentation against the code: every `tts-adapt` command quoted in README.md, docs/, the recipes' and
the demo's READMEs and the model card still parses, the Python names they quote and their links exist, and
the README's Python example runs."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tts_adapt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 12_000  # bytes: the README is what a user reads in five minutes; the rest lives in docs/


def doc_files() -> list[Path]:
    """The pages a user reads: the README, docs/, the recipes' and the demo's READMEs, the model card."""
    return [README, *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "recipes").glob("*/README.md")),
            ROOT / "demo" / "README.md", ROOT / "tts_adapt" / "pretrained" / "base" / "MODEL_CARD.md"]


# --------------------------------------------------------------------------- quoted commands
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]*(?:\n[^`\n]+)*)`")  # an inline code span may wrap onto the next lines
COMMAND = re.compile(r"(?:^|[\s(;&|])(?:tts-adapt|-m tts_adapt\.cli)\s+(.*)")
PLACEHOLDER = re.compile(r"<[^<>]*>|\b[A-Z][A-Z_]*\b")  # <dir>, <run>; DIR, N, ADAPTER


def quoted_commands(text: str) -> list[tuple[str, bool]]:
    """(arguments after `tts-adapt`, whether the quote is a complete command) for every command in a markdown
    text: the lines of its code blocks (with \\ continuations, without # comments), and its inline code."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#\s.*$", "", line)
            m = COMMAND.search(line)
            if m:
                found.append((m.group(1).strip(), True))
    for span in INLINE.findall(FENCE.sub("", text)):
        m = COMMAND.search(" " + " ".join(span.split()))
        if m:
            found.append((m.group(1).strip(), False))
    return found


def _raise(message: str):
    raise ValueError(message)


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and all its subcommands' parsers raise ValueError instead of exiting."""
    parser.error = _raise
    for action in parser._actions:  # argparse offers no public walk over subparsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def _tokens(command: str) -> tuple[list[str], bool]:
    """Shell words of a quoted command with placeholders filled in; and whether it elides arguments (...)."""
    command = re.sub(r"[\[\]]", " ", command)  # [--stage N]: optional parts of a usage line
    words = shlex.split(PLACEHOLDER.sub("1", command))
    elided = "..." in words or any(w.endswith("...") for w in words)
    return [w for w in words if not w.endswith("...")], elided


def parse_error(parser: argparse.ArgumentParser, command: str, complete: bool) -> str | None:
    """Why ``tts-adapt <command>`` does not parse, or None. A quote inside a sentence or one that elides
    arguments (``...``) may leave out required arguments or end with a flag it names; an unknown subcommand
    or flag is always an error."""
    words, elided = _tokens(command)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            parser.parse_args(words)
    except SystemExit as stop:  # --help, --version
        return None if stop.code == 0 else f"exit {stop.code}"
    except ValueError as err:
        partial = elided or not complete
        if partial and "arguments are required" in str(err):
            return None
        if partial and "expected one argument" in str(err) and words[-1].startswith("-"):
            return None  # a sentence naming a flag: `tts-adapt pretrain --init-from`
        return str(err)
    return None


def test_commands_quoted_in_the_docs_still_parse():
    parser = _strict(build_parser())
    failures, count = [], 0
    for path in doc_files():
        for command, complete in quoted_commands(path.read_text(encoding="utf-8")):
            count += 1
            error = parse_error(parser, command, complete)
            if error:
                failures.append(f"{path.relative_to(ROOT)}: `tts-adapt {command}`: {error}")
    assert count > 30, f"found only {count} quoted commands; is the extraction broken?"
    assert not failures, "commands in the docs that the CLI no longer accepts:\n" + "\n".join(failures)


def test_speakers_quoted_in_synthesize_commands_are_speakers_of_the_shipped_model():
    """`tts-adapt synthesize --speaker X` without --model speaks with the shipped model, so X must be one of its
    voices (other commands' --speaker, as prepare-target's, names a speaker of a dataset)."""
    from tts_adapt.models.speakers import SpeakerTable
    from tts_adapt.models.synthesis import DEFAULT_MODEL

    names = SpeakerTable.load(DEFAULT_MODEL).names
    quoted = []
    for path in doc_files():
        for command, _ in quoted_commands(path.read_text(encoding="utf-8")):
            tokens = shlex.split(re.sub(r"[\[\]]", " ", command))  # placeholders kept, unlike _tokens
            if not tokens or tokens[0] != "synthesize" or "--model" in tokens or "--speaker" not in tokens:
                continue
            speaker = tokens[tokens.index("--speaker") + 1]
            if not PLACEHOLDER.fullmatch(speaker):
                quoted.append((path.relative_to(ROOT), speaker))
    assert quoted, "the docs quote no synthesize --speaker example"
    assert [(p, s) for p, s in quoted if s not in names] == [], f"the shipped model's speakers: {' '.join(names)}"


def test_the_command_check_catches_unknown_flags_and_subcommands():
    parser = _strict(build_parser())
    text = ("```bash\ntts-adapt adapt --target-dir <dir> --out x --no-such-flag 3   # a comment\n"
            "tts-adapt fit-curvature --data c --out k \\\n    --num-utterances 10\n```\n"
            "and `tts-adapt evaluate --adapter DIR` or `tts-adapt teleport --now`\n")
    quoted = quoted_commands(text)
    assert [c for c, _ in quoted] == ["adapt --target-dir <dir> --out x --no-such-flag 3",
                                      "fit-curvature --data c --out k      --num-utterances 10",
                                      "evaluate --adapter DIR", "teleport --now"]
    verdicts = [parse_error(parser, c, complete) for c, complete in quoted]
    assert "--no-such-flag" in verdicts[0] and verdicts[1] is None and verdicts[2] is None
    assert "teleport" in verdicts[3]
    assert parse_error(parser, "pretrain ... --init-from <run> --steps 2000", False) is None
    assert parse_error(parser, "pretrain --init-from", False) is None
    assert "expected one argument" in parse_error(parser, "pretrain --data c --out m --init-from", True)
    assert "required" in parse_error(parser, "prepare-target --data d", True)


# --------------------------------------------------------------------------- Python names
DOTTED = re.compile(r"`(tts_adapt(?:\.\w+)+)")


def resolve(dotted: str):
    """The object a dotted name in the docs stands for: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def test_python_names_in_the_docs_exist():
    missing = []
    for path in doc_files():
        for dotted in sorted(set(DOTTED.findall(path.read_text(encoding="utf-8")))):
            try:
                resolve(dotted)
            except (ImportError, AttributeError) as err:
                missing.append(f"{path.relative_to(ROOT)}: {dotted} ({err})")
    assert not missing, "Python names in the docs that the package no longer has:\n" + "\n".join(missing)


# --------------------------------------------------------------------------- README
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_to_files_that_exist(path):
    text = path.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_readme_is_short_and_keeps_the_two_commands():
    assert len(README.read_bytes()) <= README_LIMIT
    text = README.read_text(encoding="utf-8")
    blocks = FENCE.findall(text)
    setup = [b for b in blocks if "./scripts/setup.sh" in b]
    assert len(setup) == 1 and setup[0].split() == ["./scripts/setup.sh", "./scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci.split()  # CI runs the README's test command verbatim


# --------------------------------------------------------------------------- the Python example
def readme_example() -> tuple[str, int]:
    """The README's one Python code block and the README line it starts on."""
    text = README.read_text(encoding="utf-8")
    blocks = list(re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M))
    assert len(blocks) == 1, "README.md should hold one Python example"
    return blocks[0].group(1), text[:blocks[0].start(1)].count("\n") + 1


def assigned_names(node: ast.stmt) -> set[str]:
    """Names a top-level ``a = ...`` or ``a, b = ...`` statement assigns (empty for any other statement)."""
    if not isinstance(node, ast.Assign):
        return set()
    targets = [t for target in node.targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def with_settings(code: str, settings: dict, first_line: int = 1) -> ast.Module:
    """The example without its own assignments of the names in ``settings`` (the caller provides them), its
    line numbers counted from ``first_line`` so that errors point into the README."""
    tree = ast.increment_lineno(ast.parse(code), first_line - 1)
    kept, overridden = [], set()
    for node in tree.body:
        names = assigned_names(node)
        if names and names & settings.keys():
            assert names <= settings.keys(), f"line {node.lineno} sets {sorted(names)}: settings and other names"
            overridden |= names
            continue
        kept.append(node)
    missing = settings.keys() - overridden
    assert not missing, f"the README's example no longer sets {sorted(missing)}"
    tree.body = kept
    return tree


@pytest.mark.slow
def test_readme_python_example_runs_on_the_tiny_data(tiny_corpus, tiny_model, tiny_target_clips, feature_cache,
                                                      tmp_path, monkeypatch):
    clips, heldout = tmp_path / "clips", tmp_path / "heldout"  # 10 clips to adapt on, 2 held out
    clips.mkdir()
    heldout.mkdir()
    for i, wav in enumerate(sorted(tiny_target_clips.glob("*.wav"))):
        folder = clips if i < 10 else heldout
        for f in (wav, wav.with_suffix(".txt")):
            shutil.copy(f, folder / f.name)
    monkeypatch.setenv("TTS_ADAPT_CACHE", str(feature_cache))
    monkeypatch.chdir(tmp_path)
    settings = {"model": tiny_model, "corpus": tiny_corpus, "work": tmp_path / "python", "clips": clips,
                "heldout": heldout, "curvature_utterances": 8, "steps": 2}
    namespace = dict(settings)
    code, first_line = readme_example()
    exec(compile(with_settings(code, settings, first_line), str(README), "exec"), namespace)
    work = settings["work"]
    assert (work / "kfac.safetensors").is_file()
    assert (work / "voice" / "adapter_model.safetensors").is_file()
    assert (work / "hello.wav").stat().st_size > 1000
    assert (work / "voice" / "eval" / "report.json").is_file()
