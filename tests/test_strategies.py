"""The strategies on the trainer: adapters bit-identical to the reference adapters in tests/fixtures
(made by tests/fixtures/make_strategy_adapters.py), and a strategy added from outside the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.make_strategy_adapters import CURVATURE_OF, OUT, STRATEGY_RUNS, adapt_config, weights_fingerprint
from tts_adapt.adapt.train import adapt
from tts_adapt.curvature.run import fit_curvature_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def curvature_files(tiny_model, tiny_corpus, feature_cache, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("strategy-curvature")
    files = {}
    for method in sorted(set(CURVATURE_OF.values())):
        files[method] = root / f"{method}.safetensors"
        fit_curvature_file(tiny_model, tiny_corpus, files[method], method=method, num_utterances=16, workers=1,
                           cache_dir=feature_cache, progress=False)
    return files


def test_the_tiny_model_is_the_one_the_reference_adapters_were_made_on(tiny_model):
    """Pretraining itself is unchanged: the same seed gives the same weights, bit for bit."""
    reference = json.loads((OUT / "fingerprint.json").read_text())["tiny_model_weights_sha256"]
    assert weights_fingerprint(tiny_model) == reference


@pytest.mark.parametrize("strategy", list(STRATEGY_RUNS))
def test_adapter_is_bit_identical_to_the_reference(strategy, tiny_model, tiny_target_clips, curvature_files,
                                                   feature_cache, tmp_path):
    out = tmp_path / strategy
    adapt(tiny_target_clips, out, tiny_model, adapt_config(strategy, STRATEGY_RUNS[strategy]),
          curvature=curvature_files.get(CURVATURE_OF.get(strategy)), cache_dir=feature_cache, progress=False)
    got = load_file(str(out / "adapter_model.safetensors"))
    want = load_file(str(OUT / f"{strategy}.safetensors"))
    assert sorted(got) == sorted(want)
    different = {k: float((got[k] - want[k]).abs().max()) for k in want if not torch.equal(got[k], want[k])}
    assert not different, f"{strategy}: {len(different)} tensor(s) differ from the reference, e.g. {different}"
