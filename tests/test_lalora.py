"""LaLoRA: the Fisher w.r.t. the LoRA factors A and B (tts_adapt.curvature.lora_params) and its strategy.

The curvature is checked against brute force on the tiny FastPitch: per-utterance gradients of the LoRA-wrapped
model w.r.t. every factor (the diagonal, exact), and the outer product of one utterance's gradient for a layer
with one position per utterance (where K-FAC is exact)."""

from __future__ import annotations

import copy

import pytest
import torch

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.lora import lora_factors, wrap_with_lora
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.strategies.lalora import LoraPointBuilder, LoraSetupMismatchError
from tts_adapt.adapt.train import adapt
from tts_adapt.cli import main
from tts_adapt.curvature import Curvature
from tts_adapt.curvature.lora_params import fit_lora_curvature
from tts_adapt.curvature.run import fit_curvature_file
from tts_adapt.curvature.storage import serves
from tts_adapt.data.readers import read_dataset
from tts_adapt.models.base import TTSBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fit_data(tiny_model, tiny_corpus, feature_cache):
    """The tiny model and three pretraining utterances' features."""
    backend = TTSBackend.from_pretrained(tiny_model)
    utts, _ = read_dataset(tiny_corpus, "auto", speaker_sets=["pretrain"], splits=["train"], progress=False)
    features = backend.extract_features(sorted(utts, key=lambda u: u.audio_path)[:3], feature_cache, progress=False)
    return backend, features


def _fit(backend, features, method: str, warm: int = 0, seed: int = 0) -> tuple[Curvature, LoraPointBuilder]:
    builder = LoraPointBuilder(rank=2, alpha=4.0, lora_seed=seed, warm_start_steps=warm, warm_start_lr=0.05,
                               batch_size=2, progress=False)
    curvature = fit_lora_curvature(backend, features, builder, method=method, batch_size=1, progress=False)
    return curvature, builder


def _per_utterance_grads(backend, features, curvature) -> list[dict[str, torch.Tensor]]:
    """Brute force: the gradient of each utterance's loss w.r.t. each LoRA factor, on a LoRA-wrapped copy of the
    model at the curvature's mean (eval mode), keyed as the curvature's layers."""
    setup = curvature.info["lora"]
    model = copy.deepcopy(backend.model)
    peft_model = wrap_with_lora(model, setup["targets"], setup["rank"], setup["alpha"], seed=setup["seed"])
    factors = lora_factors(peft_model)
    with torch.no_grad():
        for f in factors:
            f.A.copy_(curvature.tensors[f"{f.name}.lora_A.mean"])
            f.B.copy_(curvature.tensors[f"{f.name}.lora_B.mean"])
    peft_model.eval()
    wrapped = copy.copy(backend)
    wrapped.model = model
    out = []
    for feat in features:
        factors = lora_factors(peft_model)  # fresh views for each graph
        loss = wrapped.loss(wrapped.collate([feat]))[0]
        tensors = [t for f in factors for t in (f.A, f.B)]  # (r, in) and (out, r) views of the LoRA weights
        params = [t._base if t._base is not None else t for t in tensors]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        names = [f"{f.name}.{w}" for f in factors for w in ("lora_A", "lora_B")]
        out.append({n: (g.reshape(t.shape) if g is not None else torch.zeros_like(t))
                    for n, g, t in zip(names, grads, tensors)})
    return out


# --------------------------------------------------------------------------- the curvature against brute force
def test_diagonal_fisher_of_the_factors_matches_per_utterance_gradients(fit_data):
    backend, features = fit_data
    curvature, _ = _fit(backend, features, "lalora-diag", warm=2)  # a warm start: B* != 0, so A has curvature
    grads = _per_utterance_grads(backend, features, curvature)
    assert curvature.num_utterances == len(features)
    largest = max(float(torch.stack([g[layer] for g in grads]).pow(2).mean(0).max()) for layer in grads[0])
    with_curvature = 0
    for layer in curvature.layer_names:
        brute = torch.stack([g[layer] for g in grads]).pow(2).mean(0)
        fitted = curvature.tensors[f"{layer}.diag"]
        assert fitted.shape == brute.shape
        scale = float(brute.abs().max())
        torch.testing.assert_close(fitted, brute, rtol=2e-3, atol=1e-6 * largest + 2e-4 * scale, msg=layer)
        with_curvature += scale > 0
    assert len(curvature.layers) == len(grads[0]) >= 2 * len(curvature.targets)  # an attention module has 2 maps
    assert with_curvature >= 0.75 * len(curvature.layers)  # a vacuous comparison of zeros would not do


def test_kfac_of_the_factors_is_exact_for_one_utterance_at_one_position(fit_data):
    """A layer with one position per utterance (e.g. ``proj_g``, on the d-vector; the duration and pitch
    predictors' outputs on short inputs do not qualify): for one utterance its K-FAC block of each factor is the
    outer product of the factor's gradient (vec stacks columns: vec(∇)vec(∇)ᵀ = A_f ⊗ G_f)."""
    backend, features = fit_data
    curvature, _ = _fit(backend, features[:1], "lalora-kfac", warm=2)
    (grads,) = _per_utterance_grads(backend, features[:1], curvature)
    single = [layer.name for layer in curvature.layers
              if layer.positions == 1 and float(grads[layer.name].abs().max())]
    assert single, "no layer with one position and a gradient to compare with"
    for layer in single:
        f = curvature.factors(layer)
        kron = torch.kron(f["A"].double(), f["G"].double())
        g = grads[layer].double().T.reshape(-1)  # column-stacking vec
        exact = torch.outer(g, g)
        assert float(exact.abs().max()) > 0
        torch.testing.assert_close(kron, exact, rtol=2e-3, atol=2e-4 * float(exact.abs().max()), msg=layer)


def test_kfac_of_the_factors_is_the_merged_maps_kfac_mapped_through_the_point(fit_data, tmp_path):
    """At B* = 0 the model is the base model: the B block's factors are s² G_f and A* A_f A*ᵀ of the ΔW K-FAC fit
    of the same data, and A's output factor is zero (peft's initialisation leaves A without curvature)."""
    backend, features = fit_data
    lalora, builder = _fit(backend, features, "lalora-kfac")
    from tts_adapt.curvature.fit import fit_curvature

    kfac = fit_curvature(backend, features, method="kfac", batch_size=1, progress=False)
    s = builder.alpha / builder.rank
    for name in lalora.targets[:6]:
        for m in [n for n in kfac.layer_names if n == name or n.startswith(name + ".")]:
            A_star = lalora.tensors[f"{m}.lora_A.mean"]
            torch.testing.assert_close(lalora.tensors[f"{m}.lora_B.G"], s ** 2 * kfac.factors(m)["G"])
            torch.testing.assert_close(lalora.tensors[f"{m}.lora_B.A"], A_star @ kfac.factors(m)["A"] @ A_star.T,
                                       rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(lalora.tensors[f"{m}.lora_A.A"], kfac.factors(m)["A"])
            assert not torch.any(lalora.tensors[f"{m}.lora_B.mean"])
            assert not torch.any(lalora.tensors[f"{m}.lora_A.G"]), f"{m}: A has curvature at B = 0"


# --------------------------------------------------------------------------- A at peft's initialisation
def test_a_is_unconstrained_at_b_zero_unless_handled(fit_data):
    backend, features = fit_data
    for method in ("lalora-diag", "lalora-kfac"):
        curvature, builder = _fit(backend, features, method)
        kind = "diag" if method == "lalora-diag" else "G"
        assert all(not torch.any(curvature.tensors[f"{layer}.{kind}"])
                   for layer in curvature.layer_names if layer.endswith(".lora_A")), method
        assert any(torch.any(curvature.tensors[f"{layer}.{kind}"])
                   for layer in curvature.layer_names if layer.endswith(".lora_B")), method
        values = {}
        for a_prior in (0.0, 1.0):
            config = AdaptConfig(strategy="lalora", rank=builder.rank, alpha=builder.alpha, seed=0,
                                 lalora_a_prior=a_prior)
            strategy = get_strategy("lalora").from_config(config, curvature)
            strategy.wrap(copy.deepcopy(backend.model), curvature.targets)
            factors = lora_factors(strategy.model)
            with torch.no_grad():
                for f in factors:
                    f.A.add_(0.1)  # A moves, B stays at 0
            values[a_prior] = float(strategy(factors).detach())
        assert values[0.0] == 0.0, f"{method}: the Fisher at B = 0 penalises A"
        assert values[1.0] > 0.0, f"{method}: the prior precision on A does not act"
    # a warm start gives A curvature of its own
    curvature, _ = _fit(backend, features, "lalora-kfac", warm=2)
    assert any(torch.any(curvature.tensors[f"{layer}.G"]) for layer in curvature.layer_names
               if layer.endswith(".lora_A"))


@pytest.mark.parametrize("method", ["lalora-kfac", "lalora-diag"])
def test_penalty_is_zero_at_the_fitted_point_and_grows_with_the_distance(fit_data, method):
    backend, features = fit_data
    curvature, builder = _fit(backend, features, method, warm=2)
    config = AdaptConfig(strategy="lalora", rank=builder.rank, alpha=builder.alpha, seed=0, lalora_a_prior=0.0)
    strategy = get_strategy("lalora").from_config(config, curvature)
    strategy.wrap(copy.deepcopy(backend.model), curvature.targets)
    factors = lora_factors(strategy.model)
    assert float(strategy(factors).detach()) == 0.0  # the adaptation starts at the Laplace mean
    generator = torch.Generator().manual_seed(0)
    directions = [(torch.randn(f.A.shape, generator=generator), torch.randn(f.B.shape, generator=generator))
                  for f in factors]
    values = []
    for t in (0.01, 0.02, 0.04):
        with torch.no_grad():
            for f, (dA, dB) in zip(factors, directions):
                f.A.copy_(curvature.tensors[f"{f.name}.lora_A.mean"] + t * dA)
                f.B.copy_(curvature.tensors[f"{f.name}.lora_B.mean"] + t * dB)
        values.append(float(strategy(factors).detach()))
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] / values[0] == pytest.approx(4.0, rel=1e-3)  # a quadratic form
    assert values[2] / values[1] == pytest.approx(4.0, rel=1e-3)


# --------------------------------------------------------------------------- files, refusals, the CLI
def test_curvature_file_round_trip_and_model_check(fit_data, tmp_path):
    backend, features = fit_data
    curvature, _ = _fit(backend, features, "lalora-kfac", warm=2)
    path = tmp_path / "lalora.safetensors"
    curvature.save(path)
    loaded = Curvature.load(path, backend)  # the base model passes the check
    assert loaded.method == "lalora-kfac" and loaded.info["lora"]["init"] == "warm-start"
    assert loaded.info["lora"]["rank"] == 2 and loaded.info["lora"]["targets"] == curvature.targets
    for k, v in curvature.tensors.items():
        torch.testing.assert_close(loaded.tensors[k], v)
    assert serves("lalora-kfac", "lalora-kfac") and not serves("lalora-kfac", "kfac")
    assert not serves("kfac", "lalora-kfac") and not serves("ekfac", "lalora-diag")


def test_curvature_for_another_lora_setup_is_refused(fit_data):
    backend, features = fit_data
    curvature, builder = _fit(backend, features, "lalora-diag")
    ok = {"rank": builder.rank, "alpha": builder.alpha, "seed": 0}
    for change, word in (({"rank": 4}, "rank"), ({"alpha": 8.0}, "alpha"), ({"seed": 3}, "seed")):
        with pytest.raises(LoraSetupMismatchError, match=word):
            get_strategy("lalora").from_config(AdaptConfig(strategy="lalora", **{**ok, **change}), curvature)
    strategy = get_strategy("lalora").from_config(AdaptConfig(strategy="lalora", **ok), curvature)
    with pytest.raises(LoraSetupMismatchError, match="target layers"):
        strategy.wrap(copy.deepcopy(backend.model), curvature.targets[:-1])
    with pytest.raises(ValueError, match="lalora-kfac or lalora-diag"):
        get_strategy("lalora").from_config(AdaptConfig(strategy="lalora", **ok),
                                           fit_curvature_lora_free(backend, features))


def fit_curvature_lora_free(backend, features):
    from tts_adapt.curvature.fit import fit_curvature

    return fit_curvature(backend, features, method="diag", batch_size=1, progress=False)


def test_cli_fits_and_adapts_end_to_end(tiny_model, tiny_corpus, tiny_target_clips, feature_cache, tmp_path):
    curvature = tmp_path / "lalora.safetensors"
    assert main(["fit-curvature", "--model", str(tiny_model), "--data", str(tiny_corpus), "--out", str(curvature),
                 "--method", "lalora-kfac", "--num-utterances", "6", "--rank", "2", "--alpha", "4",
                 "--warm-start-steps", "1", "--workers", "1", "--cache-dir", str(feature_cache), "-q"]) == 0
    assert Curvature.load(curvature).info["lora"]["warm_start_steps"] == 1
    out = tmp_path / "adapter"
    assert main(["adapt", "--target-dir", str(tiny_target_clips), "--out", str(out), "--model", str(tiny_model),
                 "--strategy", "lalora", "--curvature", str(curvature), "--rank", "2", "--alpha", "4",
                 "--steps", "2", "--val-every", "1", "--cache-dir", str(feature_cache), "-q"]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    # another rank: refused with the reason, and nothing is left behind
    refused = tmp_path / "refused"
    with pytest.raises(LoraSetupMismatchError, match="rank 2 in the curvature, 4 here"):
        adapt(tiny_target_clips, refused, tiny_model, AdaptConfig(strategy="lalora", rank=4, alpha=4.0, steps=1),
              curvature=curvature, cache_dir=feature_cache, progress=False)
    assert not refused.exists()
    # a ΔW strategy refuses a LaLoRA file, and LaLoRA a ΔW file
    with pytest.raises(ValueError, match="lalora-kfac curvature file; strategy 'kfac' needs a kfac one"):
        adapt(tiny_target_clips, refused, tiny_model, AdaptConfig(strategy="kfac", steps=1), curvature=curvature,
              cache_dir=feature_cache, progress=False)
    kfac = tmp_path / "kfac.safetensors"
    fit_curvature_file(tiny_model, tiny_corpus, kfac, method="kfac", num_utterances=4, workers=1,
                       cache_dir=feature_cache, progress=False)
    with pytest.raises(ValueError, match="needs a lalora-kfac or lalora-diag one"):
        adapt(tiny_target_clips, refused, tiny_model, AdaptConfig(strategy="lalora", steps=1), curvature=kfac,
              cache_dir=feature_cache, progress=False)


def test_lalora_fit_needs_its_lora_setup(tiny_model, tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="needs a LoRA point"):
        fit_curvature_file(tiny_model, tiny_corpus, tmp_path / "x.safetensors", method="lalora-diag", workers=1,
                           progress=False)
    from tts_adapt.curvature.curvature_config import CurvatureConfig

    with pytest.raises(ValueError, match="warm_start_steps only apply to the lalora-\\* methods"):
        CurvatureConfig(method="kfac", warm_start_steps=3)


def test_demo_finds_the_lalora_file_for_lalora_only(fit_data, tmp_path):
    from tts_adapt.demo.jobs import curvature_for

    backend, features = fit_data
    curvature, _ = _fit(backend, features, "lalora-diag")
    folder = tmp_path / "curvatures"
    folder.mkdir()
    curvature.save(folder / "a-lalora.safetensors")
    assert curvature_for("lalora", [folder])[0] == folder / "a-lalora.safetensors"
    assert curvature_for("diag", [folder])[0] is None
