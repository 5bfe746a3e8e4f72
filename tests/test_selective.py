"""The selective strategy: LoRA blocks behind learned indicator gates with a straight-through gradient, an L1
penalty on the scores after a warm-up, and adapters that hold the active blocks only.

The gate's algebra is checked on a small model with every kind of layer LoRA adapts here (Linear, Conv1d and
MultiheadAttention, whose in- and out-projection are two blocks of one peft layer), against plain LoRA with
the same weights; saving, loading, the run record and resuming on the tiny FastPitch of conftest.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.adapter import TARGET_NAME, Adapter, add_target_speaker, save_adapter
from tts_adapt.adapt.lora import ADAPTER_NAME, exact_attention_forward
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.strategies.selective import SelectiveLoRA
from tts_adapt.adapt.train import adapt
from tts_adapt.models import TTSBackend

TOY_TARGETS = ["lin", "conv", "attn", "out"]
TOY_BLOCKS = ["lin", "conv", "attn.in_proj", "attn.out_proj", "out"]
TEXT = "A short test sentence."


@pytest.fixture(autouse=True)
def own_random_state():
    """Each test draws from the global generators (PyTorch's: layer initialisations, dropout; NumPy's and
    Python's, in the libraries adapt() calls) and gives their states back afterwards, so that the tests after
    this file see them as they would without it."""
    import random

    import numpy as np

    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng():
        yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


class Toy(nn.Module):
    """Linear → Conv1d → self-attention (residual) → Linear, on ``x (batch, time, 6)``."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.lin = nn.Linear(6, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x):
        h = self.lin(x)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.out(h)


def _config(strategy: str = "selective", **changes) -> AdaptConfig:
    return AdaptConfig(**{**AdaptConfig(strategy=strategy, rank=2).to_dict(), **changes})


def _wrapped(strategy: str = "selective", dtype=torch.float32, **changes):
    """A toy wrapped by ``strategy`` (same LoRA-A initialisation for every strategy), with LoRA-B set to
    seeded random values so that every block's update is nonzero."""
    s = get_strategy(strategy).from_config(_config(strategy, **changes))
    model = s.wrap(Toy(), TOY_TARGETS)
    model.to(dtype)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()
    return s, model


def _x(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3)).to(dtype)


def _output(model) -> torch.Tensor:
    """The model's output on ``_x()`` as synthesis computes it: no autograd, and no weight requiring gradients (as
    peft loads an adapter for inference). Trainable weights alone change how PyTorch's attention rounds, by about
    1e-7 relative, also under no_grad; with them frozen a trained and a loaded model compare bit for bit."""
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        return model(_x())


def _block(s: SelectiveLoRA, name: str):
    return next(b for b in s.blocks if b.name == name)


def _lora_layers(model) -> dict:
    """Every peft LoRA layer of a wrapped toy by the name of the update it carries (as the blocks are named)."""
    from peft.tuners.lora import layer as lora_layer

    found = {}
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, lora_layer.LoraLayer) and ADAPTER_NAME in module.lora_A:
            name = name.replace(".base_layer.", ".")
            found[f"{name}.in_proj" if isinstance(module, lora_layer.MultiheadAttention) else name] = module
    return found


def _zero_update(model, name: str) -> None:
    with torch.no_grad():
        _lora_layers(model)[name].lora_B[ADAPTER_NAME].weight.zero_()


# --------------------------------------------------------------------------- the gates
def test_every_gate_starts_open_and_the_model_is_plain_lora():
    s, model = _wrapped()
    _, plain = _wrapped("lora")
    assert [b.name for b in s.blocks] == TOY_BLOCKS
    assert s.active() == [True] * len(TOY_BLOCKS) and s.active_fraction() == 1.0
    c = s.config
    assert all(float(b.score.detach()) == pytest.approx(c.gate_threshold + c.gate_margin) for b in s.blocks)
    assert all(float(b.score.detach()) > c.gate_threshold for b in s.blocks)
    assert torch.equal(model(_x()), plain(_x()))
    # the scores train with the LoRA weights; peft's scaling is a plain number again between calls
    assert {id(b.score) for b in s.blocks} <= {id(p) for p in s.trainable_parameters().values()}
    assert all(isinstance(b.layer.scaling[ADAPTER_NAME], float) for b in s.blocks)


@pytest.mark.parametrize("name", TOY_BLOCKS)
def test_a_gate_closed_by_its_score_removes_exactly_that_blocks_update(name):
    s, model = _wrapped()
    _, plain = _wrapped("lora")
    open_output = model(_x())
    with torch.no_grad():
        _block(s, name).score.fill_(s.config.gate_threshold - 1e-3)
    assert s.active() == [b != name for b in TOY_BLOCKS]
    closed = model(_x())
    _zero_update(plain, name)
    assert torch.equal(closed, plain(_x()))  # every other block's update is still there, bit for bit
    assert not torch.allclose(closed, open_output)  # and the closed one did contribute
    with torch.no_grad():  # the threshold itself is open (1[score >= threshold])
        _block(s, name).score.fill_(s.config.gate_threshold)
    assert torch.equal(model(_x()), open_output)


def test_the_straight_through_gradient_of_a_score_is_the_derivative_by_its_gate():
    s, model = _wrapped(dtype=torch.float64)
    x = _x(torch.float64)
    model(x).square().sum().backward()
    got = {b.name: float(b.score.grad) for b in s.blocks}
    # reference: central differences of the loss in each block's scale factor, on plain LoRA with the same weights
    _, plain = _wrapped("lora", dtype=torch.float64)
    layers, eps = _lora_layers(plain), 1e-6
    for name, layer in layers.items():
        scale = layer.scaling[ADAPTER_NAME]
        losses = []
        for g in (1 + eps, 1 - eps):
            layer.scaling[ADAPTER_NAME] = scale * g
            with torch.no_grad():
                losses.append(float(plain(x).square().sum()))
        layer.scaling[ADAPTER_NAME] = scale
        want = (losses[0] - losses[1]) / (2 * eps)
        assert abs(want) > 1e-3, "every block moves the loss"
        assert got[name] == pytest.approx(want, rel=1e-6), name


def test_the_score_gradient_is_zero_while_lora_b_is_zero():
    s = get_strategy("selective").from_config(_config())
    model = s.wrap(Toy(), TOY_TARGETS)  # peft's start: B = 0
    model(_x()).square().sum().backward()
    assert all(b.score.grad is not None and float(b.score.grad) == 0.0 for b in s.blocks)
    assert any(float(p.grad.abs().max()) > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_the_l1_penalty_is_off_before_the_warmup_and_on_after():
    s, _ = _wrapped(gate_warmup=3, gate_l1=0.25)
    with torch.no_grad():
        _block(s, "conv").score.fill_(-0.5)
    expected_value = sum(abs(float(b.score.detach())) for b in s.blocks)
    for step, on in ((0, False), (2, False), (3, True), (10, True)):
        for b in s.blocks:
            b.score.grad = None
        (term,) = s.loss_terms(SimpleNamespace(step=step), None)
        assert term.name == "score_l1" and float(term.value.detach()) == pytest.approx(expected_value)
        assert term.weight == (0.25 if on else 0.0)
        assert term.value.requires_grad == on
        if on:
            (term.weight * term.value).backward()
            assert [float(b.score.grad) for b in s.blocks] == [-0.25 if b.name == "conv" else 0.25 for b in s.blocks]
    s0, _ = _wrapped(gate_warmup=0, gate_l1=0.0)  # no sparsity pressure at all
    assert s0.loss_terms(SimpleNamespace(step=5), None)[0].weight == 0.0


@pytest.mark.parametrize("changes, field", [({"gate_threshold": 0.0}, "gate_threshold"),
                                            ({"gate_margin": 0.0}, "gate_margin"),
                                            ({"gate_l1": -1e-3}, "gate_l1"),
                                            ({"gate_warmup": -1}, "gate_warmup")])
def test_bad_gate_settings_are_refused_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        _config(**changes)


# --------------------------------------------------------------------------- saving the active blocks
def _save_and_reload(s: SelectiveLoRA, model, folder: Path):
    """before_save, then peft's own files, then a fresh toy with the folder loaded by peft (with the exact attention
    forward that Adapter.apply puts on it too)."""
    from peft import PeftModel

    s.before_save()
    model.save_pretrained(str(folder))
    loaded = PeftModel.from_pretrained(Toy(), str(folder))
    exact_attention_forward(loaded)
    loaded.eval()
    return loaded, load_file(str(folder / "adapter_model.safetensors"))


def test_the_saved_adapter_holds_the_active_blocks_and_speaks_as_the_gated_model(tmp_path):
    full, full_model = _wrapped()
    _, full_tensors = _save_and_reload(full, full_model, tmp_path / "all-open")

    s, model = _wrapped()
    with torch.no_grad():  # close a whole layer and one half of the attention layer
        for name in ("lin", "attn.out_proj"):
            _block(s, name).score.fill_(0.0)
    gated = _output(model)
    loaded, tensors = _save_and_reload(s, model, tmp_path / "selective")
    assert torch.equal(_output(loaded), gated)
    assert not any(k.startswith("base_model.model.lin.") for k in tensors)
    assert set(full_tensors) - set(tensors) == {k for k in full_tensors if k.startswith("base_model.model.lin.")}
    # peft loads an attention layer's two updates together: the closed one is kept as a zero update
    out_b = [k for k in tensors if ".out_proj.lora_B" in k]
    assert out_b and all(not tensors[k].any() for k in out_b)
    config = json.loads((tmp_path / "selective" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["attn", "conv", "out"]
    assert (tmp_path / "selective" / "adapter_model.safetensors").stat().st_size < \
        (tmp_path / "all-open" / "adapter_model.safetensors").stat().st_size
    record = s.run_record()["selective"]
    assert record["active_blocks"] == 3 and record["active_fraction"] == pytest.approx(3 / 5)
    assert record["inactive"] == ["lin", "attn.out_proj"]
    assert record["dropped_from_adapter"] == ["lin"] and record["zero_in_adapter"] == ["attn.out_proj"]
    assert not any("selective_score" in n for n, _ in model.named_parameters())  # no trace of the gates left


def test_an_adapter_with_every_block_inactive_keeps_the_smallest_layer_at_zero(tmp_path):
    s, model = _wrapped()
    with torch.no_grad():
        for b in s.blocks:
            b.score.fill_(-1.0)
    gated = _output(model)
    base = Toy()
    base.eval()
    assert torch.equal(gated, _output(base))  # every update gated off: the base model
    loaded, tensors = _save_and_reload(s, model, tmp_path / "none")
    assert torch.equal(_output(loaded), gated)
    # the kept layer is the one with the fewest LoRA weights (out: 8 → 4), its update zero
    config = json.loads((tmp_path / "none" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["out"]
    assert all(not tensors[k].any() for k in tensors if "lora_B" in k)
    assert s.run_record()["selective"]["active_fraction"] == 0.0


# --------------------------------------------------------------------------- on the tiny FastPitch
@pytest.mark.slow
def test_a_saved_fastpitch_adapter_loads_with_adapter_and_speaks_as_the_gated_model(tiny_model, tmp_path):
    backend = TTSBackend.from_pretrained(tiny_model)
    fingerprint = backend.fingerprint()
    d_vector = backend.speakers.embeddings.mean(0)
    rows = add_target_speaker(backend, d_vector)
    s = get_strategy("selective").from_config(_config())
    s.wrap(backend.model, backend.lora_targets(), rows)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in s.model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        for i, b in enumerate(s.blocks):  # every third block closed, attention halves among them
            if i % 3 == 0:
                b.score.fill_(0.0)
    backend.model.eval()
    for p in backend.model.parameters():  # as an adapter loads for inference (see _output)
        p.requires_grad_(False)
    gated = backend.synthesize_mel(TEXT, speaker=TARGET_NAME)
    s.before_save()
    save_adapter(tmp_path / "a", s.model, d_vector, {"config": s.config.to_dict(), **s.run_record()},
                 base_fingerprint=fingerprint, targets=backend.lora_targets())
    loaded = Adapter.load(tmp_path / "a").apply(TTSBackend.from_pretrained(tiny_model))
    assert torch.equal(loaded.synthesize_mel(TEXT, speaker=TARGET_NAME), gated)
    record = json.loads((tmp_path / "a" / "run.json").read_text())["selective"]
    assert record["blocks"] == len(s.blocks) and record["active_blocks"] == len(s.blocks) - len(record["inactive"])


def _selective_run(target, model, cache, out, **kw):
    # the L1 dominates every loss gradient from step 2 on and closes every gate within the 4 steps (AdamW
    # moves each score by about lr = 2e-3 a step, against a margin of 1e-3); validated once, at the end
    config = _config(steps=4, batch_size=4, val_every=4, checkpoint_every=1, gate_margin=1e-3, gate_warmup=2,
                     gate_l1=10.0)
    return adapt(target, out, model, config, cache_dir=cache, progress=False, **kw)


@pytest.mark.slow
def test_adapt_logs_the_active_fraction_records_it_and_resumes_exactly(tiny_model, tiny_target_clips,
                                                                          feature_cache, tmp_path):
    card = _selective_run(tiny_target_clips, tiny_model, feature_cache, tmp_path / "whole")
    curve = card["curve"]
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    assert curve[0]["active_fraction"] == 1.0 and curve[-1]["active_fraction"] == 0.0
    assert all("score_l1" in r for r in curve)
    written = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert written["selective"] == card["selective"]
    assert card["selective"]["active_fraction"] == 0.0 and card["selective"]["active_blocks"] == 0
    assert Adapter.load(tmp_path / "whole").apply(TTSBackend.from_pretrained(tiny_model)) \
        .synthesize_mel(TEXT, speaker=TARGET_NAME).isfinite().all()

    assert _selective_run(tiny_target_clips, tiny_model, feature_cache, tmp_path / "resumed",
                          stop_after=3)["status"] == "interrupted"
    resumed = _selective_run(tiny_target_clips, tiny_model, feature_cache, tmp_path / "resumed", resume=True)
    assert resumed["curve"] == curve and resumed["selective"] == card["selective"]
    a, b = load_file(str(tmp_path / "whole" / "adapter_model.safetensors")), \
        load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_selective_is_a_choice_of_the_cli_and_of_the_sweep():
    from tts_adapt.cli import build_parser, config_from_args
    from tts_adapt.evaluate.sweep_config import SweepConfig

    args = build_parser().parse_args(["adapt", "--target-dir", "clips", "--out", "a", "--strategy", "selective",
                                      "--gate-l1", "0.002", "--gate-warmup", "10"])
    config = config_from_args(args, AdaptConfig, "adapt")
    assert (config.strategy, config.gate_l1, config.gate_warmup) == ("selective", 0.002, 10)
    sweep = SweepConfig(strategies="lora,selective", lams=())
    assert sweep.cells() == [("lora", 0.0), ("selective", 0.0)]
