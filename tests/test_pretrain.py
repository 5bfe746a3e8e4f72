"""Pretraining: the run folder, exact resume, refused config changes, torchrun data parallelism, batching."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tts_adapt.models import TTSBackend
from tts_adapt.models.pretrain import STATE_FILE, epoch_batches, lr_factor, pretrain
from tts_adapt.models.pretrain_config import PretrainConfig

CONFIG = PretrainConfig(size="tiny", steps=4, batch_size=4, checkpoint_every=2, log_every=1, warmup_steps=2,
                        val_utterances=4)
MODEL_FILES = ("config.json", "model.pth", "tts_adapt.json", "speakers.safetensors")


def _log(folder: Path) -> list[dict]:
    with open(folder / "train_log.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pth", map_location="cpu", weights_only=True)["model"]


def _run(corpus: Path, out: Path, cache: Path, config: PretrainConfig = CONFIG, **kwargs) -> TTSBackend:
    return pretrain(corpus, out, config, cache_dir=cache, workers=1, progress=False, **kwargs)


@pytest.fixture(scope="module")
def run_a(tiny_corpus, feature_cache, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run (shared: tests only read it)."""
    out = tmp_path_factory.mktemp("pretrain") / "a"
    _run(tiny_corpus, out, feature_cache)
    return out


# --------------------------------------------------------------------------- the run folder
@pytest.mark.slow
def test_pretrain_writes_a_loadable_model_log_and_state(run_a):
    for name in MODEL_FILES + (STATE_FILE, "pretrain.json", "train_log.csv"):
        assert (run_a / name).is_file(), name
    model = TTSBackend.from_pretrained(run_a)
    assert model.info["steps"] == 4 and model.info["size"] == "tiny"
    assert model.audio.n_mels == CONFIG.n_mels
    assert model.speakers.kind == "d_vector" and len(model.speakers.names) == 4  # the corpus's pretrain speakers
    assert torch.load(run_a / "model.pth", weights_only=True)["step"] == 4
    mel = model.synthesize_mel("A short test sentence.", speaker=model.speakers.names[0])
    assert mel.shape[0] == model.audio.n_mels and torch.isfinite(mel).all()
    assert json.loads((run_a / "pretrain.json").read_text()) == CONFIG.to_dict()

    rows = _log(run_a)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) and float(r["lr"]) > 0 for r in rows)
    for r in rows:  # validation loss at the checkpoints (every 2 steps) only
        if int(r["step"]) % CONFIG.checkpoint_every == 0:
            assert math.isfinite(float(r["val_loss"])), r
        else:
            assert r["val_loss"] == "", r

    state = torch.load(run_a / STATE_FILE, weights_only=True)
    assert state["step"] == 4 and {"weights", "optimizer", "scheduler", "epoch", "position", "rng"} <= set(state)


@pytest.mark.slow
def test_resume_equals_uninterrupted(run_a, tiny_corpus, feature_cache, tmp_path):
    out = tmp_path / "b"
    _run(tiny_corpus, out, feature_cache, stop_after=2)
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 2
    assert [int(r["step"]) for r in _log(out)] == [1, 2]
    _run(tiny_corpus, out, feature_cache)  # the same call again: resumes at step 2 and finishes
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 4

    a, b = _weights(run_a), _weights(out)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs from the uninterrupted one in {different[:5]}"
    log_a, log_b = _log(run_a), _log(out)
    assert [int(r["step"]) for r in log_b] == [1, 2, 3, 4]
    for ra, rb in zip(log_a, log_b):
        assert (ra["loss"], ra["val_loss"], ra["lr"]) == (rb["loss"], rb["val_loss"], rb["lr"])


@pytest.mark.slow
def test_cool_down_branched_from_a_longer_run_equals_the_run_made_with_it(tiny_corpus, feature_cache, tmp_path):
    """A run of N steps with cool-down C is the same as a longer run without one, branched at
    step N - C into the cool-down: one config reproduces a model made that way."""
    cool = PretrainConfig(**{**CONFIG.to_dict(), "cooldown_steps": 2})
    whole, branched = tmp_path / "whole", tmp_path / "branched"
    _run(tiny_corpus, whole, feature_cache, cool)
    _run(tiny_corpus, branched, feature_cache, PretrainConfig(**{**CONFIG.to_dict(), "steps": 50}), stop_after=2)
    _run(tiny_corpus, branched, feature_cache, cool)
    a, b = _weights(whole), _weights(branched)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = [float(r["lr"]) for r in _log(whole)]
    assert lrs == [float(r["lr"]) for r in _log(branched)]
    assert lrs[1] > lrs[2] > lrs[3] == 0.0  # falls linearly to zero over the last two steps


def test_learning_rate_schedule_warms_up_decays_and_cools_down():
    noam = [lr_factor(s, 100) for s in range(1, 1001)]
    assert noam[99] == 1.0 and noam[49] == 0.5 and math.isclose(noam[399], 0.5)  # step 100 peak, 1/sqrt decay
    cooled = [lr_factor(s, 100, total=1000, cooldown=200) for s in range(1, 1001)]
    assert cooled[:800] == noam[:800]  # the schedule before the cool-down is untouched
    assert math.isclose(cooled[899], noam[799] / 2) and cooled[999] == 0.0
    assert all(a > b for a, b in zip(cooled[799:], cooled[800:]))
    with pytest.raises(ValueError, match="cooldown_steps"):
        PretrainConfig(steps=10, cooldown_steps=10)


def test_time_budget_ends_the_sitting_with_a_checkpoint(tiny_corpus, feature_cache, tmp_path):
    out = tmp_path / "timed"
    _run(tiny_corpus, out, feature_cache, max_minutes=0.0)  # out of time after the first step
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 1
    assert TTSBackend.from_pretrained(out).info["steps"] == 1
    assert [int(r["step"]) for r in _log(out)] == [1]


@pytest.mark.slow
def test_another_config_in_the_same_folder_is_refused(run_a, tiny_corpus, feature_cache):
    before = {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()}
    other = PretrainConfig(**{**CONFIG.to_dict(), "lr": CONFIG.lr / 2})
    with pytest.raises(ValueError, match="another configuration"):
        _run(tiny_corpus, run_a, feature_cache, other)
    assert {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()} == before  # nothing touched


@pytest.mark.slow
def test_a_run_from_before_the_mel_band_setting_counts_as_80_bands(run_a, tiny_corpus, feature_cache, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(run_a, older)
    settings = json.loads((older / "pretrain.json").read_text())
    # written before the settings existed, when every run had 80 bands and SWIPE' pitch targets
    for key in ("n_mels", "f0_method", "init_from"):
        del settings[key]
    (older / "pretrain.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"another configuration.*'n_mels': \(80, 128\), "
                                         r"'f0_method': \('swipe', 'rapt'\)}"):
        _run(tiny_corpus, older, feature_cache)


@pytest.mark.slow
def test_a_run_can_start_from_another_models_weights(run_a, tiny_corpus, feature_cache, tmp_path):
    config = PretrainConfig(**{**CONFIG.to_dict(), "init_from": str(run_a), "steps": 1, "lr": 1e-12})
    _run(tiny_corpus, tmp_path / "warm", feature_cache, config)
    warm = TTSBackend.from_pretrained(tmp_path / "warm")
    start = _weights(run_a)
    # one step at a vanishing learning rate: still the weights it started from, not a fresh initialisation
    assert all(torch.allclose(w, start[k], atol=1e-6) for k, w in _weights(tmp_path / "warm").items())
    assert warm.info["steps"] == 1 and warm.info["init_from"]["steps"] == 4
    assert warm.info["init_from"]["path"] == str(run_a) and warm.info["init_from"]["pretrain"] == CONFIG.to_dict()

    for init_from, message in ((tmp_path / "nothing", "init_from: model folder not found"),
                               (run_a, "do not fit this run's model")):
        other = PretrainConfig(**{**CONFIG.to_dict(), "init_from": str(init_from), "conditioning": "id_table"})
        with pytest.raises(ValueError, match=message):
            _run(tiny_corpus, tmp_path / f"bad-{init_from.name}", feature_cache, other)


@pytest.mark.slow
def test_too_little_data_for_one_batch_is_an_error(tiny_corpus, feature_cache, tmp_path):
    """The tiny corpus has 32 training utterances: a batch of 64 never fills (this used to loop forever)."""
    config = PretrainConfig(**{**CONFIG.to_dict(), "conditioning": "id_table", "batch_size": 64})
    with pytest.raises(ValueError, match="do not fill one batch of 64"):
        _run(tiny_corpus, tmp_path / "big-batch", feature_cache, config)


# --------------------------------------------------------------------------- data parallel
@pytest.mark.slow
def test_torchrun_data_parallel(tiny_corpus, feature_cache, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        pytest.skip(f"no torchrun next to {sys.executable}")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tts_adapt.cli", "pretrain",
           "--data", str(tiny_corpus), "--out", str(out), "--size", "tiny", "--steps", "2", "--batch-size", "4",
           "--checkpoint-every", "2", "--log-every", "1", "--warmup-steps", "1", "--val-utterances", "4",
           "--workers", "1", "--cache-dir", str(feature_cache), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    model = TTSBackend.from_pretrained(out)
    assert model.info["steps"] == 2
    assert [int(r["step"]) for r in _log(out)] == [1, 2]
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["rng"].dim() == 2 and state["rng"].shape[0] == 2  # one RNG state per process
    mel = model.synthesize_mel("Two processes trained me.", speaker=model.speakers.names[0])
    assert torch.isfinite(mel).all()


# --------------------------------------------------------------------------- batching
def test_epoch_batches_are_deterministic_full_and_length_sorted():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 500, (203,), generator=g).tolist()
    batch_size = 4
    first = epoch_batches(lengths, batch_size, seed=0, epoch=0)
    assert first == epoch_batches(lengths, batch_size, seed=0, epoch=0)
    assert first != epoch_batches(lengths, batch_size, seed=0, epoch=1)
    assert first != epoch_batches(lengths, batch_size, seed=1, epoch=0)
    assert all(len(b) == batch_size for b in first)
    flat = [int(i) for b in first for i in b]
    assert len(flat) == len(set(flat))  # no utterance twice in an epoch
    assert len(flat) >= len(lengths) - batch_size * math.ceil(len(lengths) / (batch_size * 16))  # few dropped
    # similar lengths: the spread inside a batch is far below the spread of the data
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 0.15 * (max(lengths) - min(lengths)), spread
    # and the order of batches is shuffled, not sorted by length
    means = [sum(lengths[i] for i in b) / batch_size for b in first]
    assert means != sorted(means) and means != sorted(means, reverse=True)
