"""Shared fixtures: one tiny corpus and one feature cache for the whole test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tts_adapt.data.corpus import CorpusConfig

#: The corpus the model and pretraining tests share: 6 speakers (4 pretrain, 1 unseen, 1 target),
#: 12 utterances each (8 train, 2 parallel + 2 further held out).
TINY_CORPUS = CorpusConfig(speakers=6, utterances=12, parallel=2, heldout=2, unseen_speakers=1, target_speakers=1,
                           prompts=60)

SYNTHS = ("flite", "espeak-ng", "sox")


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


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for every test of the session, so features are extracted once."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run on small CPUs that are often busy: one intra-op thread avoids oversubscription, which
    slows the LSTM of the speaker encoder and the tiny models several times over."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
