"""Penalties on LoRA updates against dense computations, on real peft LoRA layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.lora import lora_factors, wrap_with_lora
from tts_adapt.adapt.strategies import STRATEGIES, get_strategy


class FactorTable:
    """Curvature factors held in a dict: the interface penalties read (``layer_names``, ``factors``)."""

    def __init__(self, tensors: dict[tuple[str, str], torch.Tensor]):
        self._t = tensors
        self.layer_names = sorted({name for name, _ in tensors})

    def tensor(self, name, key):
        return self._t[(name, key)]

    def factors(self, name):
        return {k: v for (n, k), v in self._t.items() if n == name}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.conv = nn.Conv1d(3, 4, kernel_size=3, padding=1)
        self.dilated = nn.Conv1d(4, 4, kernel_size=3, padding=2, dilation=2)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return x


def _spd(n, gen):
    m = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return m @ m.T + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.fixture
def lora_model():
    torch.manual_seed(0)
    model = wrap_with_lora(Tiny().double(), ["lin", "conv", "attn"], rank=2, alpha=4.0).double()
    with torch.no_grad():  # LoRA-B starts at zero; give it values so ΔW != 0
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    return model


@pytest.fixture
def curvature(lora_model):
    gen = torch.Generator().manual_seed(1)
    t = {}
    for f in lora_factors(lora_model):
        out, inp = f.B.shape[0], f.A.shape[1]
        A, G = _spd(inp, gen), _spd(out, gen)
        t[(f.name, "A")], t[(f.name, "G")] = A, G
        t[(f.name, "diag")] = torch.rand(out, inp, generator=gen, dtype=torch.float64)
        t[(f.name, "QA")] = torch.linalg.eigh(A).eigenvectors
        t[(f.name, "QG")] = torch.linalg.eigh(G).eigenvectors
        t[(f.name, "S")] = torch.rand(out, inp, generator=gen, dtype=torch.float64)
    return FactorTable(t)


def test_lora_factors_cover_linear_conv_and_attention(lora_model):
    names = {f.name: f for f in lora_factors(lora_model)}
    assert set(names) == {"lin", "conv", "attn.in_proj", "attn.out_proj"}
    assert names["conv"].A.shape == (2, 3 * 3)  # (r, C_in * kernel)
    assert names["attn.in_proj"].B.shape == (12, 2)  # stacked q, k, v
    assert names["lin"].scale == pytest.approx(2.0)


def test_conv_delta_is_the_update_on_unfolded_patches(lora_model):
    """ΔW of the Conv1d, applied to unfolded patches, equals the LoRA branch's output."""
    f = {f.name: f for f in lora_factors(lora_model)}["conv"]
    conv_layer = dict(lora_model.named_modules())["base_model.model.conv"]
    x = torch.randn(2, 3, 11, dtype=torch.float64)
    with torch.no_grad():
        lora_out = conv_layer(x) - conv_layer.base_layer(x)
        patches = torch.nn.functional.unfold(x[:, :, None, :], kernel_size=(1, 3), padding=(0, 1))  # (B, C_in*k, T)
        dense = torch.einsum("oi,bit->bot", f.delta(), patches)
    torch.testing.assert_close(lora_out, dense)


@pytest.mark.parametrize("layer", ["lin", "conv", "attn.in_proj", "attn.out_proj"])
def test_kfac_trace_form_equals_dense_kronecker(lora_model, curvature, layer):
    f = {f.name: f for f in lora_factors(lora_model)}[layer]
    A, G = curvature.tensor(layer, "A"), curvature.tensor(layer, "G")
    vec = f.delta().T.reshape(-1)  # column-major vec(ΔW)
    dense = vec @ torch.kron(A, G) @ vec
    torch.testing.assert_close(get_strategy("kfac")(curvature).layer(f), dense)


@pytest.mark.parametrize("layer", ["lin", "conv"])
def test_ekfac_and_diag_and_l2_equal_dense_forms(lora_model, curvature, layer):
    f = {f.name: f for f in lora_factors(lora_model)}[layer]
    dW = f.delta()
    QA, QG, S = (curvature.tensor(layer, k) for k in ("QA", "QG", "S"))
    torch.testing.assert_close(get_strategy("ekfac")(curvature).layer(f), torch.sum(S * (QG.T @ dW @ QA) ** 2))
    torch.testing.assert_close(get_strategy("diag")(curvature).layer(f),
                               torch.sum(curvature.tensor(layer, "diag") * dW ** 2))
    torch.testing.assert_close(get_strategy("l2")().layer(f), torch.sum(dW ** 2))


def test_ekfac_with_kfac_eigenvalues_equals_kfac(lora_model, curvature):
    """With S = outer product of the factors' eigenvalues, EK-FAC is exactly K-FAC."""
    f = {f.name: f for f in lora_factors(lora_model)}["lin"]
    eA, QA = torch.linalg.eigh(curvature.tensor("lin", "A"))
    eG, QG = torch.linalg.eigh(curvature.tensor("lin", "G"))
    table = FactorTable({("lin", "QA"): QA, ("lin", "QG"): QG, ("lin", "S"): torch.outer(eG, eA),
                         ("lin", "A"): curvature.tensor("lin", "A"), ("lin", "G"): curvature.tensor("lin", "G")})
    torch.testing.assert_close(get_strategy("ekfac")(table).layer(f), get_strategy("kfac")(table).layer(f))


@pytest.mark.parametrize("strategy", ["l2", "diag", "kfac", "ekfac"])
def test_penalty_gradient_passes_gradcheck(lora_model, curvature, strategy):
    penalty = get_strategy(strategy)(curvature if get_strategy(strategy).needs_curvature else None, damping=0.1)
    f = {f.name: f for f in lora_factors(lora_model)}["conv"]
    A = f.A.detach().clone().requires_grad_(True)
    B = f.B.detach().clone().requires_grad_(True)

    def fn(A, B):
        return penalty([type(f)(f.name, A, B, f.scale)])

    assert torch.autograd.gradcheck(fn, (A, B))


def test_dilated_conv_targets_are_refused():
    with pytest.raises(ValueError, match="dilated"):
        wrap_with_lora(Tiny(), ["lin", "dilated"], rank=2)


def test_strategies_registry():
    assert {"lora", "l2", "diag", "kfac", "ekfac"} <= set(STRATEGIES)
    with pytest.raises(ValueError, match="valid: lora"):
        get_strategy("ewc++")
    with pytest.raises(ValueError, match="valid: lora"):
        AdaptConfig(strategy="ewc++")
    with pytest.raises(ValueError, match="already registered"):
        STRATEGIES.register(get_strategy("kfac"))
    with pytest.raises(ValueError, match="curvature"):
        get_strategy("kfac")(None)
    assert {s: get_strategy(s).curvature_method for s in STRATEGIES if get_strategy(s).needs_curvature} == \
        {"diag": "diag", "kfac": "kfac", "ekfac": "ekfac", "lalora": "lalora-kfac"}


def test_missing_layers_in_curvature_are_named(lora_model):
    table = FactorTable({("lin", "A"): torch.eye(6), ("lin", "G"): torch.eye(5)})
    with pytest.raises(ValueError, match="conv"):
        get_strategy("kfac")(table).check_layers(lora_factors(lora_model))
