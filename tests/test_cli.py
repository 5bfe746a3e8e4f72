"""The command line: every subcommand has help; errors are messages, not tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tts_adapt.cli import build_parser, main

SUBCOMMANDS = ["corpus", "pretrain", "synthesize", "fit-curvature", "adapt", "prepare-target", "evaluate", "sweep",
               "demo", "quickstart"]


def test_top_level_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "tts_adapt.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("argv", [[s] for s in SUBCOMMANDS] + [["corpus", a] for a in ("build", "check", "inspect")])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--help"])
    assert exc.value.code == 0
    assert "usage: tts-adapt" in capsys.readouterr().out


def test_sweep_names_a_bad_strategy_without_a_traceback(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "s"), "--strategies", "lora,kfca"]) == 1
    err = capsys.readouterr().err
    assert "kfca" in err and "valid:" in err and "Traceback" not in err


def test_config_file_with_unknown_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("corpus:\n  speakers: 8\n  speekers: 9\n")
    assert main(["corpus", "build", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "speekers" in err and str(cfg) in err and "Traceback" not in err


def test_flags_override_config_file(tmp_path):
    from tts_adapt.cli import _corpus_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("corpus:\n  speakers: 12\n  utterances: 12\n")
    args = build_parser().parse_args(["corpus", "build", "--out", "x", "--config", str(cfg), "--utterances", "20"])
    config = _corpus_config(args)
    assert (config.speakers, config.utterances) == (12, 20)


def test_bad_dataset_path_is_a_message(tmp_path, capsys):
    assert main(["corpus", "inspect", "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err


def test_inspect_summarises_bad_files(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    d = tmp_path / "clips"
    d.mkdir()
    t = np.arange(16000) / 16000
    sf.write(d / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    (d / "a.txt").write_text("Hello there.")
    sf.write(d / "b.wav", np.zeros(16000), 16000)
    (d / "b.txt").write_text("Silence here.")
    assert main(["corpus", "inspect", "--data", str(d), "--layout", "custom"]) == 0
    out = capsys.readouterr().out
    assert "1 usable utterances" in out and "b.wav" in out and "silent" in out
