"""What the command line refuses: bad settings, bad files and mismatched parts, each as a user would hit them.

Every case runs ``tts-adapt`` in-process on the tiny model and clips of the test session and checks three
things: the exit code, the error line (it names the file or flag and the reason, without a traceback) and
that no file in the output folder, nor in the inputs, changed. The list doubles as the catalogue of
docs/refusals.md. A last test kills an adaptation with SIGKILL and resumes it to a bit-identical adapter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tts_adapt.cli import main

#: 4 steps of rank 2 on the tiny clips: every adaptation of this file
QUICK = ["--rank", "2", "--steps", "4", "--batch-size", "4", "--val-every", "2", "--checkpoint-every", "2"]


def tree_state(*folders: Path) -> dict[str, str]:
    """Content hashes of every file under ``folders`` (missing folders count as empty)."""
    state = {}
    for folder in folders:
        if folder.is_file():
            state[str(folder)] = hashlib.sha256(folder.read_bytes()).hexdigest()
            continue
        for p in sorted(folder.rglob("*")) if folder.exists() else []:
            if p.is_file():
                state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


@pytest.fixture(scope="module")
def world(tiny_model, tiny_corpus, tiny_target_clips, feature_cache, tmp_path_factory):
    """The parts the cases combine: the tiny model, its K-FAC and diagonal curvature, one finished adapter,
    a model with other weights, and a few broken files."""
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.train import adapt
    from tts_adapt.curvature.run import fit_curvature_file
    from tts_adapt.models import TTSBackend

    root = tmp_path_factory.mktemp("faults")
    patch = pytest.MonkeyPatch()
    patch.setenv("TTS_ADAPT_CACHE", str(feature_cache))  # commands without --cache-dir share the session's cache
    for method in ("kfac", "diag"):
        fit_curvature_file(tiny_model, tiny_corpus, root / f"{method}.safetensors", method=method,
                           num_utterances=8, workers=1, cache_dir=feature_cache, progress=False)
    adapt(tiny_target_clips, root / "adapter", tiny_model,
          AdaptConfig(strategy="lora", rank=2, steps=2, batch_size=4, val_every=2, checkpoint_every=2),
          cache_dir=feature_cache, progress=False)
    other = TTSBackend.from_pretrained(tiny_model)
    import torch

    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    other.save_pretrained(root / "other-model")
    broken = Path(shutil.copytree(root / "adapter", root / "broken-adapter"))
    data = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[:len(data) // 2])
    (root / "random.safetensors").write_bytes(os.urandom(4096))
    few = root / "three-clips"
    few.mkdir()
    for wav in sorted(tiny_target_clips.glob("*.wav"))[:3]:
        shutil.copy(wav, few / wav.name)
        shutil.copy(wav.with_suffix(".txt"), few / wav.with_suffix(".txt").name)
    (root / "a-file").write_text("not a folder\n")
    (root / "bad.yaml").write_text("adapt:\n  lr: 0.001\n  learning_rate: 3\n")
    (root / "broken.yaml").write_text("adapt: [unclosed\n")
    yield {"model": tiny_model, "corpus": tiny_corpus, "clips": tiny_target_clips, "root": root,
            "kfac": root / "kfac.safetensors", "diag": root / "diag.safetensors", "adapter": root / "adapter",
            "other_model": root / "other-model", "broken_adapter": broken, "random": root / "random.safetensors",
            "few": few, "a_file": root / "a-file", "bad_yaml": root / "bad.yaml", "broken_yaml": root / "broken.yaml",
            "cache": feature_cache}
    patch.undo()


def adapt_args(w, out, *extra):
    return ["adapt", "--target-dir", str(w["clips"]), "--out", str(out), "--model", str(w["model"]),
            "--cache-dir", str(w["cache"]), *QUICK, *extra]


def synth_args(w, out, *extra):
    return ["synthesize", "--model", str(w["model"]), "--out", str(out), *extra]


#: (case id, argv builder (world, out folder) -> argv, exit code, regex the error must match)
CASES = [
    # numeric settings, checked when parsed
    ("adapt-lr-nan", lambda w, o: adapt_args(w, o, "--strategy", "lora", "--lr", "nan"), 1, r"lr must be a finite"),
    ("adapt-lr-huge", lambda w, o: adapt_args(w, o, "--strategy", "lora", "--lr", "1e9"), 1, r"lr must be <= 1"),
    ("adapt-lam-nan", lambda w, o: adapt_args(w, o, "--lam", "nan", "--curvature", str(w["kfac"])), 1,
     r"lam must be a finite"),
    ("adapt-lam-inf", lambda w, o: adapt_args(w, o, "--lam", "inf", "--curvature", str(w["kfac"])), 1,
     r"lam must be a finite"),
    ("adapt-lam-negative", lambda w, o: adapt_args(w, o, "--lam", "-1", "--curvature", str(w["kfac"])), 1,
     r"lam must be >= 0"),
    ("adapt-alpha-zero", lambda w, o: adapt_args(w, o, "--strategy", "lora", "--alpha", "0"), 1,
     r"alpha must be > 0"),
    ("adapt-damping-negative", lambda w, o: adapt_args(w, o, "--strategy", "l2", "--damping", "-1"), 1,
     r"damping must be >= 0"),
    ("adapt-rank-zero", lambda w, o: adapt_args(w, o, "--strategy", "lora", "--rank", "0"), 1, r"rank must be >= 1"),
    ("adapt-lr-not-a-number", lambda w, o: adapt_args(w, o, "--lr", "fast"), 2, r"--lr: invalid float value"),
    ("pretrain-lr-nan", lambda w, o: ["pretrain", "--data", str(w["corpus"]), "--out", str(o), "--lr", "nan"], 1,
     r"lr must be a finite"),
    ("pretrain-batch-zero", lambda w, o: ["pretrain", "--data", str(w["corpus"]), "--out", str(o), "--batch-size",
                                          "0"], 1, r"batch_size must be >= 1"),
    ("fit-curvature-zero-utterances", lambda w, o: ["fit-curvature", "--model", str(w["model"]), "--data",
                                                    str(w["corpus"]), "--out", str(o / "k.safetensors"),
                                                    "--num-utterances", "0"], 1, r"num_utterances must be >= 1"),
    ("fit-curvature-unknown-method", lambda w, o: ["fit-curvature", "--model", str(w["model"]), "--data",
                                                   str(w["corpus"]), "--out", str(o / "k.safetensors"), "--method",
                                                   "newton"], 1, r"unknown curvature method 'newton'"),
    ("corpus-sample-rate", lambda w, o: ["corpus", "build", "--out", str(o), "--sample-rate", "100"], 1,
     r"sample_rate must be >= 8000"),
    # YAML configs
    ("config-unknown-key", lambda w, o: adapt_args(w, o, "--config", str(w["bad_yaml"])), 1,
     r"bad\.yaml: unknown key\(s\) learning_rate"),
    ("config-not-yaml", lambda w, o: adapt_args(w, o, "--config", str(w["broken_yaml"])), 1,
     r"broken\.yaml: not valid YAML"),
    ("config-missing", lambda w, o: adapt_args(w, o, "--config", str(w["root"] / "none.yaml")), 1,
     r"config file not found: .*none\.yaml"),
    # strategies and curvature files
    ("adapt-unknown-strategy", lambda w, o: adapt_args(w, o, "--strategy", "ewc++"), 1,
     r"unknown strategy 'ewc\+\+'; valid: lora"),
    ("adapt-kfac-without-curvature", lambda w, o: adapt_args(w, o, "--strategy", "kfac"), 1,
     r"strategy 'kfac' needs --curvature FILE"),
    ("adapt-kfac-on-diag-file", lambda w, o: adapt_args(w, o, "--strategy", "kfac", "--curvature", str(w["diag"])), 1,
     r"diag\.safetensors: a diag curvature file; strategy 'kfac' needs a kfac one"),
    ("adapt-curvature-missing", lambda w, o: adapt_args(w, o, "--curvature", str(w["root"] / "none.safetensors")), 1,
     r"curvature file not found: .*none\.safetensors"),
    ("adapt-curvature-random-bytes", lambda w, o: adapt_args(w, o, "--curvature", str(w["random"])), 1,
     r"random\.safetensors is not a safetensors file"),
    ("adapt-curvature-of-other-model", lambda w, o: adapt_args(w, o, "--curvature", str(w["kfac"]), "--model",
                                                               str(w["other_model"])), 1,
     r"kfac\.safetensors was fitted on a model with the same layers but different weights"),
    # target clips and output folders
    ("adapt-too-few-clips", lambda w, o: ["adapt", "--target-dir", str(w["few"]), "--out", str(o), "--model",
                                          str(w["model"]), "--strategy", "lora", *QUICK], 1,
     r"three-clips: 3 usable clip\(s\), at least 10 are needed"),
    ("adapt-target-missing", lambda w, o: ["adapt", "--target-dir", str(w["root"] / "nowhere"), "--out", str(o),
                                           "--model", str(w["model"]), "--strategy", "lora", *QUICK], 1,
     r"nowhere"),
    ("adapt-out-holds-adapter", lambda w, o: adapt_args(w, w["adapter"], "--strategy", "lora"), 1,
     r"adapter already holds an adapter; choose another --out"),
    ("adapt-resume-nothing", lambda w, o: adapt_args(w, o, "--strategy", "lora", "--resume"), 1,
     r"checkpoint/state\.pt: nothing to resume"),
    ("adapt-out-not-writable", lambda w, o: adapt_args(w, w["a_file"] / "out", "--strategy", "lora"), 1,
     r"a-file/out: cannot write the adapter there"),
    ("adapt-model-missing", lambda w, o: ["adapt", "--target-dir", str(w["clips"]), "--out", str(o), "--model",
                                          str(w["root"] / "no-model"), "--strategy", "lora", *QUICK], 1,
     r"no-model"),
    # adapters at synthesis and evaluation
    ("synthesize-adapter-not-a-folder", lambda w, o: synth_args(w, o / "x.wav", "--text", "Hello there.",
                                                                "--adapter", str(w["few"])), 1,
     r"three-clips: missing adapter_config\.json"),
    ("synthesize-adapter-truncated", lambda w, o: synth_args(w, o / "x.wav", "--text", "Hello there.", "--adapter",
                                                             str(w["broken_adapter"])), 1,
     r"broken-adapter: an adapter file is unreadable"),
    ("synthesize-adapter-other-model", lambda w, o: ["synthesize", "--model", str(w["other_model"]), "--out",
                                                     str(o / "x.wav"), "--text", "Hello there.", "--adapter",
                                                     str(w["adapter"])], 1,
     r"adapter: the adapter was trained on another base model \(fingerprint [0-9a-f]{12}, this model's [0-9a-f]{12}\)"),
    ("synthesize-empty-text", lambda w, o: synth_args(w, o / "x.wav", "--text", "   ", "--speaker-wav",
                                                      str(sorted(w["clips"].glob("*.wav"))[0])), 1,
     r"text is empty"),
    ("synthesize-unknown-speaker", lambda w, o: synth_args(w, o / "x.wav", "--text", "Hello.", "--speaker",
                                                           "nobody"), 1, r"nobody"),
    ("evaluate-adapter-missing", lambda w, o: ["evaluate", "--model", str(w["model"]), "--adapter",
                                               str(w["root"] / "no-adapter"), "--out", str(o)], 1, r"no-adapter"),
]


@pytest.mark.parametrize("case, argv_of, code, message", CASES, ids=[c[0] for c in CASES])
def test_refused_with_a_clear_message_and_nothing_changed(case, argv_of, code, message, world, tmp_path, capsys):
    out = tmp_path / "out"
    argv = argv_of(world, out)
    watched = [out, world["root"], world["clips"], world["model"]]
    before = tree_state(*watched)
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        got = exit_info.value.code
    else:
        got = main(argv)
    err = capsys.readouterr().err
    assert got == code, f"{case}: exit code {got}, stderr:\n{err}"
    assert "Traceback" not in err
    first = next((line for line in err.splitlines() if "error" in line), "")
    import re

    assert re.search(message, first), f"{case}: the error line does not say {message!r}:\n{err}"
    assert tree_state(*watched) == before, f"{case}: files changed"
    assert not out.exists() or not any(out.iterdir()), f"{case}: left files in the output folder"


@pytest.mark.slow
def test_kill_9_during_adaptation_then_resume_gives_the_same_adapter(world, tmp_path):
    """SIGKILL in the middle of training, then --resume: the adapter is bit-identical to an uninterrupted run's."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    def argv(out):
        return [sys.executable, "-m", "tts_adapt.cli",
                *adapt_args(world, out, "--strategy", "kfac", "--lam", "1000", "--curvature", str(world["kfac"]))]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    long = ["--steps", "30", "--checkpoint-every", "1", "--val-every", "10", "--patience", "10"]
    subprocess.run(argv(whole) + long, check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(argv(killed) + long, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoint" / "state.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and state.stat().st_size > 0:
            time.sleep(1.0)  # a few more steps, so that the kill lands mid-run
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "adapter_config.json").exists()
    subprocess.run(argv(killed) + long + ["--resume"], check=True, env=env, capture_output=True, timeout=600)
    a = load_file(str(whole / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter_model.safetensors"))
    import torch

    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
