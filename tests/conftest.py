"""Shared fixtures: one tiny corpus, one feature cache, one tiny pretrained model and the target speaker's
clips for the whole test session."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from tts_adapt.data.corpus import CorpusConfig
from tts_adapt.models.pretrain_config import PretrainConfig

#: The corpus the model and pretraining tests share: 6 speakers (4 pretrain, 1 unseen, 1 target),
#: 12 utterances each (8 train, 2 parallel + 2 further held out).
TINY_CORPUS = CorpusConfig(speakers=6, utterances=12, parallel=2, heldout=2, unseen_speakers=1, target_speakers=1,
                           prompts=60)

SYNTHS = ("flite", "espeak-ng", "sox")
#: A tiny FastPitch pretrained for 2 steps: the model of the adaptation and demo tests.
TINY_PRETRAIN = PretrainConfig(size="tiny", steps=2, batch_size=4, checkpoint_every=2, log_every=1, warmup_steps=1,
                               val_utterances=4)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The tiny corpus, built once per session (needs flite, espeak-ng and sox)."""
    missing = [p for p in SYNTHS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"building the corpus needs {', '.join(missing)} (installed by scripts/setup.sh)")
    from tts_adapt.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("shared-corpus") / "tiny"
    build_corpus(out, TINY_CORPUS, workers=2, progress=False)
    return out


def flite_speech(text: str, path: Path, voice: str = "slt", *options: str) -> tuple:
    """``text`` spoken by flite's ``voice`` into ``path`` (16 kHz WAV): ``(samples float32, rate)``; the test
    is skipped where flite is missing. ``options`` go to flite before the text (``--setf`` settings)."""
    import subprocess

    import soundfile as sf

    if shutil.which("flite") is None:
        pytest.skip("needs flite (installed by scripts/setup.sh)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["flite", "-voice", voice, *options, "-t", text, "-o", str(path)], check=True, capture_output=True)
    wav, sr = sf.read(str(path), dtype="float32")
    return wav, sr


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for every test of the session, so features are extracted once."""
    return tmp_path_factory.mktemp("feature-cache")


def copy_target_clips(corpus: Path, dest: Path, n: int = 12) -> Path:
    """The corpus's target speaker's first ``n`` clips as a flat folder of wav + txt."""
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["speaker_set"] == "target"]
    assert len({r["speaker"] for r in rows}) == 1 and len(rows) >= n, "the tiny corpus has one 12-clip target"
    dest.mkdir(parents=True)
    for r in sorted(rows, key=lambda r: r["utt_id"])[:n]:
        shutil.copy(corpus / r["audio"], dest / f"{r['utt_id']}.wav")
        (dest / f"{r['utt_id']}.txt").write_text(r["text"] + "\n", encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def tiny_model(tiny_corpus, feature_cache, tmp_path_factory) -> Path:
    """A tiny FastPitch (d-vector conditioning), pretrained for 2 steps on the tiny corpus (read only)."""
    from tts_adapt.models.pretrain import pretrain

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    pretrain(tiny_corpus, out, TINY_PRETRAIN, cache_dir=feature_cache, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_target_clips(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus's target speaker's 12 clips, wav + txt (shared: tests must not modify it)."""
    return copy_target_clips(tiny_corpus, tmp_path_factory.mktemp("target") / "clips")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run on small CPUs that are often busy: one intra-op thread avoids oversubscription, which
    slows the LSTM of the speaker encoder and the tiny models several times over."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip, saying why, on a machine where PyTorch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu-check.sh runs these where there is one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
