"""Curvature fit: every statistic against a known answer on tiny models.

The toy models run in float64 so that the hook-based statistics can be compared tightly with
brute-force computations (autograd per utterance, explicit patch loops, curvlinops). The last
tests run the real tiny FastPitch for every method and Fisher type.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tts_adapt.curvature import (Curvature, CurvatureMismatchError, FitState, UnsupportedLayerError, fit_curvature,
                                 record_linear_maps)
from tts_adapt.curvature.hooks import conv1d_patches
from tts_adapt.data.audio import AudioConfig
from tts_adapt.models.base import TTSBackend
from tts_adapt.models.features import FeatureStats, UtteranceFeatures
from tts_adapt.models.speakers import SpeakerTable

CHANNELS = 3


# --------------------------------------------------------------------------- a toy backend
class ToyModel(nn.Module):
    """mel (B, F, C) -> Linear -> tanh -> [Conv1d (dilated, padded)] -> [self-attention] -> Linear -> (B, F, C).
    Padding frames are zeroed between layers (as coqui's models do), so padding never leaks into real frames.
    ``trace`` (a dict) receives every layer's (input, output) for brute-force references."""

    def __init__(self, hidden: int = 4, conv: bool = True, attention: bool = False, batch_first: bool = False):
        super().__init__()
        self.inp = nn.Linear(CHANNELS, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=3, padding=2, dilation=2) if conv else None
        self.attn = nn.MultiheadAttention(hidden, 2, batch_first=batch_first) if attention else None
        self.out = nn.Linear(hidden, CHANNELS)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        m = mask[..., None].to(mel.dtype)
        h = self.inp(mel)
        if trace is not None:
            trace["inp"] = (mel, h)
        h = torch.tanh(h) * m
        if self.conv is not None:
            x = h.transpose(1, 2)
            y = self.conv(x)
            if trace is not None:
                trace["conv"] = (x, y)
            h = torch.tanh(y.transpose(1, 2)) * m
        if self.attn is not None:
            x = h if self.attn.batch_first else h.transpose(0, 1)
            a, _ = self.attn(x, x, x, key_padding_mask=~mask)
            h = h + (a if self.attn.batch_first else a.transpose(0, 1))
            h = h * m
        if trace is not None:
            trace["out_input"] = h
        y = self.out(h)
        if trace is not None:
            trace["out"] = (h, y)
        return y


def toy_targets(model: ToyModel) -> list[str]:
    return [n for n in ("inp", "conv", "attn", "out") if getattr(model, n) is not None]


def utterance_loss(model: ToyModel, mel: torch.Tensor, mask: torch.Tensor, trace: dict | None = None):
    """Per-utterance losses (B,): squared error summed over real frames and channels."""
    out = model(mel, mask, trace)
    return (((out - mel.flip(-1)) ** 2).sum(-1) * mask).sum(1)


class ToyBackend(TTSBackend):
    """The TTSBackend protocol over a ToyModel; the loss is the mean over utterances of their summed
    squared errors, so B times it is exactly the sum of the per-utterance losses."""

    name = "toy"

    def __init__(self, model: ToyModel):
        super().__init__(model, AudioConfig(n_mels=CHANNELS),
                         FeatureStats(torch.zeros(CHANNELS), torch.ones(CHANNELS), 0.0, 1.0),
                         SpeakerTable("id_table", ["spk"]))

    def loss(self, batch):
        loss = utterance_loss(self.model, batch.mel.double(), batch.frame_mask).mean()
        return loss, {"loss": loss.item()}

    def lora_targets(self):
        return toy_targets(self.model)

    @classmethod
    def create(cls, *args, **kwargs):
        raise NotImplementedError

    @classmethod
    def _load_model(cls, folder, speakers):
        raise NotImplementedError

    def _coqui_config(self):
        raise NotImplementedError

    def text_to_ids(self, text):
        return [1]

    def synthesize_mel(self, *args, **kwargs):
        raise NotImplementedError


def toy_backend(seed: int = 0, **model_kwargs) -> ToyBackend:
    torch.manual_seed(seed)
    return ToyBackend(ToyModel(**model_kwargs).double())


def toy_features(lengths=(5, 3, 7, 4), seed: int = 0) -> list[UtteranceFeatures]:
    """Utterances of the given numbers of frames, one token each (so the token axis never looks like frames)."""
    g = torch.Generator().manual_seed(seed)
    return [UtteranceFeatures(f"u{i}", "spk", torch.randn(n, CHANNELS, generator=g), torch.zeros(n),
                              torch.ones(1, dtype=torch.long), "") for i, n in enumerate(lengths)]


def per_utterance(backend: ToyBackend, f: UtteranceFeatures):
    """Loss of one utterance alone (no padding) and its trace."""
    mel = f.mel.double()[None]
    mask = torch.ones(1, mel.shape[1], dtype=torch.bool)
    trace: dict = {}
    return utterance_loss(backend.model, mel, mask, trace).sum(), trace


def per_utterance_grads(backend: ToyBackend, features, params: dict[str, str]) -> dict[str, torch.Tensor]:
    """Per-utterance weight gradients by autograd, (N, out, in) per layer name."""
    model = backend.model
    grads = {name: [] for name in params}
    for f in features:
        loss, _ = per_utterance(backend, f)
        weights = [model.get_parameter(p) for p in params.values()]
        for name, g in zip(params, torch.autograd.grad(loss, weights)):
            grads[name].append(g.reshape(g.shape[0], -1))  # conv weights as (out, C_in * kernel)
    return {k: torch.stack(v) for k, v in grads.items()}


def loop_patches(x: torch.Tensor, k: int, stride: int, padding: int, dilation: int) -> torch.Tensor:
    """Explicit Conv1d patches of x (C, T): (T_out, C * k), zero outside the signal."""
    C, T = x.shape
    t_out = (T + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    rows = []
    for t in range(t_out):
        row = []
        for c in range(C):
            for j in range(k):
                pos = t * stride - padding + j * dilation
                row.append(x[c, pos] if 0 <= pos < T else x.new_zeros(()))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def close(a, b, rtol=1e-6, atol=1e-9):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- Conv1d as a linear map
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kwargs", [dict(padding=2, dilation=2), dict(padding=1, stride=2),
                                    dict(padding="same", kernel_size=4), dict(padding=1, padding_mode="reflect"),
                                    dict(padding=0, dilation=3)],
                         ids=["pad-dilate", "stride", "same-even", "reflect", "valid-dilate"])
def test_conv1d_patches_reproduce_the_convolution(kwargs):
    torch.manual_seed(0)
    kwargs = {"kernel_size": 3, **kwargs}
    conv = nn.Conv1d(2, 5, **kwargs).double()
    x = torch.randn(3, 2, 11, dtype=torch.float64)
    patches = conv1d_patches(x, conv)
    close(patches @ conv.weight.reshape(5, -1).T + conv.bias, conv(x).transpose(1, 2), rtol=1e-12, atol=1e-12)
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        ref = loop_patches(x[1], conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])
        close(patches[1], ref, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding=2, dilation=2), dict(padding="same", kernel_size=4),
                                    dict(padding=1, padding_mode="reflect"), dict(padding=0, dilation=3),
                                    dict(padding=2, kernel_size=5), dict(padding=0, kernel_size=1)],
                         ids=["k3", "pad-dilate", "same-even", "reflect", "valid-dilate", "k5", "k1"])
@pytest.mark.parametrize("time_major", [False, True], ids=["channel-major", "time-major"])
def test_conv1d_input_gram_equals_the_patches_gram(kwargs, time_major):
    """A stride-1 Conv1d's A statistic, assembled from lagged Gram matrices of its input without the patches,
    equals the Gram matrix of the real positions' patches for any mask (also with holes, and an empty
    utterance), in either memory layout of the input; padding frames that hold inf or nan do not count."""
    from tts_adapt.curvature.hooks import LayerCall, _pad_conv_input

    torch.manual_seed(0)
    kwargs = {"kernel_size": 3, **kwargs}
    conv = nn.Conv1d(3, 2, **kwargs).double()
    x = torch.randn(9, 4, 3, dtype=torch.float64).permute(1, 2, 0) if time_major else torch.randn(4, 3, 9).double()
    T_out = conv(x).shape[-1]
    mask = torch.rand(4, T_out) < 0.6
    mask[0], mask[1] = False, torch.arange(T_out) < T_out - 4  # an empty utterance, a padded one
    if conv.padding_mode == "zeros":
        x[1, :, -1] = float("nan")  # padding beyond utterance 1's last real patch
    source = _pad_conv_input(x, conv)
    assert source.permute(2, 0, 1).is_contiguous() == (time_major and conv.padding_mode == "zeros")
    call = LayerCall(source, mask, kernel=(conv.kernel_size[0], 1, conv.dilation[0]))
    patches = conv1d_patches(x, conv)[mask]
    close(call.input_gram(), patches.T @ patches, rtol=1e-12, atol=1e-12)
    kernel = call.kernel
    if conv.padding_mode == "zeros":  # zeroed by multiplication, the nan shows where the fit looks for it
        assert not torch.isfinite(call.input_gram(finite=True, blocks=True)[0].diagonal()).all()
        x[1, :, -1] = 1e30  # a finite number there counts for nothing
        call = LayerCall(_pad_conv_input(x, conv), mask, kernel=kernel)
    close(call.input_gram(finite=True), patches.T @ patches, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["kfac", "ekfac", "diag"])
def test_the_fit_computes_no_weight_gradient(method):
    """The fit asks autograd for the gradients at the target layers' outputs only: a hook on every weight
    (which fires whenever its gradient is computed) never fires, and the statistics are those of a
    ``backward()`` through the same hooks (the other tests compare them with brute force)."""
    backend, features = toy_backend(attention=True), toy_features()
    fired = []
    handles = [p.register_hook(lambda g, n=n: fired.append(n)) for n, p in backend.model.named_parameters()]
    try:
        curv = fit_curvature(backend, features, method=method, batch_size=2, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert fired == []
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in curv.tensors.values())


@pytest.mark.parametrize("columns", [1, 5, 6, 7, 13])
def test_symmetric_products_in_blocks(columns, monkeypatch):
    """rowsᵀ rows from the blocks on and above the diagonal, also when the last block is narrower."""
    from tts_adapt.curvature import hooks

    monkeypatch.setattr(hooks, "GRAM_BLOCK", 3)
    rows = torch.randn(20, columns, dtype=torch.float64)
    close(hooks._symmetric_product(rows), rows.T @ rows, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- K-FAC factors
def test_kfac_factors_equal_brute_force_expectations():
    """A = Σ x xᵀ / P and G = Σ g gᵀ / N over real frames, for a Linear and a padded, dilated Conv1d,
    against per-utterance autograd and explicit patch loops (batches of 2 with padding)."""
    backend, features = toy_backend(), toy_features()
    curv = fit_curvature(backend, features, batch_size=2, progress=False)
    conv = backend.model.conv
    sums = {k: 0 for k in ("inp.A", "inp.G", "conv.A", "conv.G")}
    positions = 0
    for f in features:
        loss, trace = per_utterance(backend, f)
        g_inp, g_conv = torch.autograd.grad(loss, [trace["inp"][1], trace["conv"][1]])
        x_inp = trace["inp"][0][0]  # (F, C)
        x_conv = loop_patches(trace["conv"][0][0].detach(), 3, 1, 2, 2)  # (F, H * 3)
        sums["inp.A"] += x_inp.T @ x_inp
        sums["inp.G"] += g_inp[0].T @ g_inp[0]
        sums["conv.A"] += x_conv.T @ x_conv
        sums["conv.G"] += g_conv[0] @ g_conv[0].T  # conv gradients are (H, F)
        positions += f.mel.shape[0]
    N = len(features)
    close(curv.tensors["inp.A"], sums["inp.A"] / positions)
    close(curv.tensors["inp.G"], sums["inp.G"] / N)
    close(curv.tensors["conv.A"], sums["conv.A"] / positions)
    close(curv.tensors["conv.G"], sums["conv.G"] / N)
    assert curv.layer("conv").positions == positions and curv.num_utterances == N
    assert curv.tensors["conv.A"].shape == (conv.in_channels * 3,) * 2


def test_kfac_of_one_position_is_the_exact_fisher():
    """One utterance of one frame: A ⊗ G is vec(g xᵀ) vec(g xᵀ)ᵀ (vec stacks columns), the exact Fisher."""
    backend, features = toy_backend(conv=False), toy_features(lengths=(1,))
    curv = fit_curvature(backend, features, targets=["inp"], progress=False)
    loss, _ = per_utterance(backend, features[0])
    (grad,) = torch.autograd.grad(loss, [backend.model.inp.weight])
    vec = grad.T.reshape(-1)
    close(torch.kron(curv.tensors["inp.A"].double(), curv.tensors["inp.G"].double()), torch.outer(vec, vec))


def test_kfac_equals_curvlinops():
    """Same model, data and loss (sum of squared errors) as curvlinops' KFACLinearOperator (empirical
    Fisher, expand): our A is its input covariance, N · our G its gradient covariance."""
    curvlinops = pytest.importorskip("curvlinops")
    backend = toy_backend(conv=False)
    N, T = 4, 5
    features = toy_features(lengths=(T,) * N)

    class View(nn.Module):  # curvlinops calls model(X)
        def __init__(self, toy):
            super().__init__()
            self.toy = toy

        def forward(self, X):
            return self.toy(X, torch.ones(X.shape[:2], dtype=torch.bool))

    view = View(backend.model)
    X = torch.stack([f.mel.double() for f in features])
    params = [backend.model.inp.weight, backend.model.out.weight]
    kfac = curvlinops.KFACLinearOperator(view, nn.MSELoss(reduction="sum"), params, [(X, X.flip(-1))],
                                         fisher_type="empirical", kfac_approx="expand", check_deterministic=False,
                                         num_data=N, num_per_example_loss_terms=T)
    kfac.compute_kronecker_factors()
    ours = fit_curvature(backend, features, batch_size=3, progress=False)
    state = kfac.state_dict()
    for name in ("inp", "out"):
        close(ours.tensors[f"{name}.A"], state["input_covariances"][f"toy.{name}"])
        close(N * ours.tensors[f"{name}.G"], state["gradient_covariances"][f"toy.{name}"])
    # the whole matrix (curvlinops flattens weights row-major: G ⊗ A)
    D = sum(p.numel() for p in params)
    dense = kfac @ torch.eye(D, dtype=torch.float64)
    blocks = [N * torch.kron(ours.tensors[f"{n}.G"].double(), ours.tensors[f"{n}.A"].double()) for n in ("inp", "out")]
    close(dense, torch.block_diag(*blocks))


def test_padding_frames_do_not_count():
    """Batches padded to their longest utterance give the statistics of the utterances alone."""
    backend, features = toy_backend(attention=True), toy_features(lengths=(6, 2, 4))
    for method in ("kfac", "diag"):
        padded = fit_curvature(backend, features, method=method, batch_size=3, progress=False)
        alone = fit_curvature(backend, features, method=method, batch_size=1, progress=False)
        for key, value in alone.tensors.items():
            close(padded.tensors[key], value, rtol=1e-6, atol=1e-7)
        assert [l.positions for l in padded.layers] == [l.positions for l in alone.layers]
        assert padded.layer("conv").positions == 12


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
def test_attention_statistics_from_the_autograd_graph_equal_a_rerun(batch_first):
    """The attention projections' inputs and output gradients, read from the autograd graph of the model's own
    call, equal those of the re-run of the attention core, which the hook falls back to where the graph does
    not show them (here: weights that do not require gradients)."""
    from tts_adapt.curvature import hooks

    backend, features = toy_backend(attention=True, batch_first=batch_first), toy_features(lengths=(6, 2, 4))
    batch = backend.collate(features)
    attn = backend.model.attn

    def record():
        with record_linear_maps(backend.model, ["attn"], masks=(batch.frame_mask,)) as rec:
            backend.loss(batch)[0].backward()
            return {name: calls[0] for name, calls in rec.calls.items()}

    probe = torch.zeros(3, 1, 4, dtype=torch.float64)
    tapped = record()
    assert hooks._projection_nodes(attn, attn(probe, probe, probe)[0]) is not None
    attn.in_proj_weight.requires_grad_(False)
    attn.out_proj.weight.requires_grad_(False)
    assert hooks._projection_nodes(attn, attn(probe, probe, probe)[0]) is None
    rerun = record()
    for name in ("attn.in_proj", "attn.out_proj"):
        close(tapped[name].inputs, rerun[name].inputs, rtol=1e-12, atol=1e-12)
        close(tapped[name].grads, rerun[name].grads, rtol=1e-10, atol=1e-12)
        assert torch.equal(tapped[name].mask, rerun[name].mask)


def test_partial_sums_fold_at_any_interval(monkeypatch):
    """Folding the float32 partial sums into the running sums after every batch gives the fit that folds once."""
    from tts_adapt.curvature import fit

    backend, features = toy_backend(attention=True), toy_features(lengths=(5, 3, 7, 4, 6))
    once = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False)
    monkeypatch.setattr(fit, "FOLD_BATCHES", 1)
    every = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False)
    for key, value in once.tensors.items():
        close(every.tensors[key], value, rtol=1e-9, atol=1e-12)


def test_padding_that_holds_nan_does_not_count():
    """A layer whose inputs hold nan on padding frames (the model masks its outputs there) gets the statistics it
    gets with zeros there: padding is zeroed by multiplication first, and where that let nan through (seen on
    the Gram matrices' diagonals), the batch's statistics are made again by selection."""

    class NanPadding(ToyModel):
        def __init__(self, fill: float):
            super().__init__(conv=False)
            self.fill = fill

        def forward(self, mel, mask, trace=None):
            keep = mask[..., None]
            h = torch.where(keep, torch.tanh(self.inp(mel)), self.fill)  # `out` gets `fill` on padding frames
            return torch.where(keep, self.out(h), 0.0)

    features = toy_features(lengths=(6, 2, 4))
    fits = {}
    for fill in ("0", "nan"):
        torch.manual_seed(0)
        fits[fill] = fit_curvature(ToyBackend(NanPadding(float(fill)).double()), features, batch_size=3,
                                   progress=False)
    for key, value in fits["0"].tensors.items():
        assert torch.isfinite(fits["nan"].tensors[key]).all(), key
        close(fits["nan"].tensors[key], value, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- diagonal and EK-FAC
TOY_PARAMS = {"inp": "inp.weight", "conv": "conv.weight", "attn.in_proj": "attn.in_proj_weight",
              "attn.out_proj": "attn.out_proj.weight", "out": "out.weight"}


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
def test_diagonal_equals_per_utterance_autograd(batch_first):
    """diag = mean over utterances of squared per-utterance gradients, attention projections included."""
    backend, features = toy_backend(attention=True, batch_first=batch_first), toy_features()
    curv = fit_curvature(backend, features, method="diag", batch_size=3, progress=False)
    grads = per_utterance_grads(backend, features, TOY_PARAMS)
    for name, g in grads.items():
        close(curv.tensors[f"{name}.diag"], (g ** 2).mean(0))


def test_ekfac_scalings_equal_brute_force():
    """S = mean over utterances of (Q_Gᵀ ∇W_n Q_A)² in the fitted K-FAC eigenbasis, which is that of A and G."""
    backend, features = toy_backend(attention=True), toy_features()
    curv = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False)
    grads = per_utterance_grads(backend, features, TOY_PARAMS)
    for name, g in grads.items():
        f = {k: v.double() for k, v in curv.factors(name).items()}
        close(f["QA"] @ torch.diag(f["eigA"]) @ f["QA"].T, f["A"], rtol=1e-5, atol=1e-6)
        close(f["QG"] @ torch.diag(f["eigG"]) @ f["QG"].T, f["G"], rtol=1e-5, atol=1e-6)
        close(f["S"], ((f["QG"].T @ g @ f["QA"]) ** 2).mean(0), rtol=1e-5, atol=1e-9)


def test_ekfac_of_one_position_is_the_kfac_eigenvalue_product():
    """With one utterance of one frame, S_ij = eigG_i · eigA_j (EK-FAC and K-FAC coincide)."""
    backend, features = toy_backend(conv=False), toy_features(lengths=(1,))
    curv = fit_curvature(backend, features, method="ekfac", progress=False)
    for name in ("inp", "out"):
        f = curv.factors(name)
        close(f["S"], torch.outer(f["eigG"], f["eigA"]), rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- files and resuming
def test_save_load_round_trip(tmp_path):
    backend, features = toy_backend(attention=True), toy_features()
    for method in ("kfac", "ekfac", "diag"):
        curv = fit_curvature(backend, features, method=method, batch_size=2, progress=False)
        path = tmp_path / f"{method}.safetensors"
        curv.save(path)
        loaded = Curvature.load(path, backend)
        assert loaded.method == method and loaded.fisher == "empirical"
        assert loaded.layers == curv.layers and loaded.targets == curv.targets
        assert loaded.num_utterances == len(features) and loaded.fingerprint == backend.fingerprint(curv.targets)
        assert loaded.audio == backend.audio.to_dict()
        assert loaded.tensors.keys() == curv.tensors.keys()
        for key in curv.tensors:
            assert torch.equal(loaded.tensors[key], curv.tensors[key])
    assert not list(tmp_path.glob(".*.tmp"))


def test_loading_for_another_model_is_refused(tmp_path):
    backend, features = toy_backend(), toy_features()
    path = tmp_path / "curvature.safetensors"
    fit_curvature(backend, features, progress=False).save(path)
    Curvature.load(path)  # no backend: no check
    other_weights = toy_backend(seed=1)
    with pytest.raises(CurvatureMismatchError, match="same layers but different weights") as err:
        Curvature.load(path, other_weights)
    assert str(path) in str(err.value)
    with pytest.raises(CurvatureMismatchError, match=r"different layers: inp.weight is \(5, 3\)"):
        Curvature.load(path, toy_backend(hidden=5))
    with pytest.raises(CurvatureMismatchError, match="has no module 'conv'"):
        Curvature.load(path, toy_backend(conv=False))


def test_fit_in_two_calls_equals_fit_at_once(tmp_path):
    """An EK-FAC fit (two passes of 3 batches) stopped inside its first pass, its state saved and loaded,
    stopped again inside its second pass, then finished, equals the fit done at once."""
    backend, features = toy_backend(), toy_features(lengths=(5, 3, 7, 4, 6))
    at_once = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False)
    state = FitState()
    first = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False, state=state, max_batches=2)
    assert first is None and not state.done and (state.phase, state.batches_seen) == (0, 2)
    state.save(tmp_path / "state.safetensors")
    state = FitState.load(tmp_path / "state.safetensors")
    assert fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False, state=state,
                         max_batches=2) is None  # the end of the first pass and one batch of the second
    assert (state.phase, state.batches_seen) == (1, 1)
    resumed = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False, state=state)
    assert state.done
    for key, value in at_once.tensors.items():
        close(resumed.tensors[key], value, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="another fit"):
        fit_curvature(backend, features, method="kfac", batch_size=2, progress=False, state=state)


# --------------------------------------------------------------------------- errors and hook hygiene
def test_unsupported_layers_are_refused_clearly():
    model = nn.Sequential(nn.Conv1d(4, 4, 3, groups=2), nn.MultiheadAttention(4, 2), nn.GRU(4, 4))
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        with record_linear_maps(model, ["0"]):
            pass
    with pytest.raises(UnsupportedLayerError, match="target the attention module '1'"):
        with record_linear_maps(model, ["1.out_proj"]):
            pass
    with pytest.raises(UnsupportedLayerError, match="GRU"):
        with record_linear_maps(model, ["2"]):
            pass
    with pytest.raises(ValueError, match="valid: kfac, ekfac, diag"):
        fit_curvature(toy_backend(), toy_features(), method="kron", progress=False)
    with pytest.raises(ValueError, match="curvature of LoRA factors at a LoRA point"):
        fit_curvature(toy_backend(), toy_features(), method="lalora-kfac", progress=False)


def test_hooks_are_removed_even_after_an_error():
    model = ToyModel(attention=True).double()
    with pytest.raises(RuntimeError, match="boom"):
        with record_linear_maps(model, toy_targets(model)):
            assert model.inp._forward_hooks and model.attn._forward_hooks
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


def test_positions_follow_the_mask_of_each_layers_time_axis():
    """A layer takes the mask whose length matches its time axis and keeps that axis when a later batch has two
    axes of the same length; a layer first seen in such a batch is refused rather than guessed."""
    from tts_adapt.curvature import PositionMaskError

    lin = nn.Linear(3, 2)
    frames = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    tokens = torch.tensor([[True] * 3, [True, False, False]])
    as_long_as_frames = tokens[:, [0, 1, 1, 2, 2]]  # 5 tokens, other positions than the frames
    with record_linear_maps(lin, [""], masks=(frames, tokens)) as rec:
        lin(torch.randn(2, 5, 3))
        lin(torch.randn(3, 2, 3))  # time-first (T, B, in) on the token axis
        rec.masks = (frames, as_long_as_frames)
        lin(torch.randn(2, 5, 3))  # ambiguous, but the layer is known to run on frames
        masks = [c.mask for c in rec.calls[""]]
        assert torch.equal(masks[0], frames) and torch.equal(masks[1], tokens) and torch.equal(masks[2], frames)
        assert rec.calls[""][1].inputs.shape == (2, 3, 3)
    with record_linear_maps(lin, [""], masks=(frames, as_long_as_frames)) as rec:
        with pytest.raises(PositionMaskError, match="several different masks"):
            lin(torch.randn(2, 5, 3))
        with pytest.raises(PositionMaskError, match="cannot tell real positions from padding"):
            lin(torch.randn(2, 7, 3))


# --------------------------------------------------------------------------- the real tiny FastPitch
@pytest.fixture(scope="module")
def fastpitch():
    from tts_adapt.models import FastPitchBackend

    torch.manual_seed(0)
    names = ["alice", "bob"]
    vectors = nn.functional.normalize(torch.randn(len(names), 256), dim=1)
    audio = AudioConfig()
    stats = FeatureStats(torch.full((audio.n_mels,), -4.0), torch.full((audio.n_mels,), 2.0), 150.0, 30.0)
    backend = FastPitchBackend.create(audio, stats, SpeakerTable("d_vector", names, vectors), size="tiny")
    g = torch.Generator().manual_seed(0)
    features = []
    for i, (frames, tokens) in enumerate([(30, 8), (24, 6), (41, 11)]):
        f0 = 120 + 60 * torch.rand(frames, generator=g)
        f0[::5] = 0.0  # a few unvoiced frames
        features.append(UtteranceFeatures(f"u{i}", names[i % 2], -4 + 2 * torch.randn(frames, 80, generator=g), f0,
                                          torch.randint(1, 40, (tokens,), generator=g), "synthetic"))
    return backend, features


@pytest.mark.parametrize("fisher", ["empirical", "mc"])
@pytest.mark.parametrize("method", ["kfac", "ekfac", "diag"])
def test_fastpitch_curvature_of_every_kind(fastpitch, method, fisher):
    backend, features = fastpitch
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    curv = fit_curvature(backend, features, method=method, fisher=fisher, batch_size=2, progress=False)
    assert curv.targets == backend.lora_targets() and curv.num_utterances == len(features)
    assert {l.kind for l in curv.layers} == {"linear", "conv1d", "attention_in", "attention_out"}
    params = dict(backend.model.named_parameters())
    for layer in curv.layers:
        assert params[layer.param].numel() == layer.out_features * layer.in_features
        f = curv.factors(layer.name)
        assert all(torch.isfinite(t).all() for t in f.values()), layer.name
        for kind in ("A", "G"):
            if kind in f:
                m = f[kind].double()
                assert m.shape == (layer.in_features,) * 2 if kind == "A" else (layer.out_features,) * 2
                assert torch.equal(m, m.T)
                assert torch.linalg.eigvalsh(m).min() >= -1e-6 * max(m.abs().max(), 1e-30), (layer.name, kind)
        for kind in ("diag", "S"):
            if kind in f:
                assert f[kind].shape == layer.shape and (f[kind] >= 0).all()
        if method == "kfac":
            assert f["G"].abs().sum() > 0, f"{layer.name} got no gradient"  # every target reaches the loss
    assert all(torch.equal(v, backend.model.state_dict()[k]) for k, v in before.items())  # weights untouched


def test_fastpitch_monte_carlo_gradients_are_the_sampled_noise(fastpitch):
    """The mel output comes straight from the decoder's 1x1 postnet conv, so under the Monte Carlo Fisher its
    output gradient at frame t is -2 α ε_t / (n_mels · T) (batch of one; ε the drawn unit Gaussian noise):
    G = (1/N) Σ_n (2α / (80 T_n))² Σ_t ε_t ε_tᵀ, reproduced from the seeded generator of each batch."""
    from tts_adapt.curvature.fit import _batch_generator, batch_plan

    backend, features = fastpitch
    curv = fit_curvature(backend, features, method="kfac", fisher="mc", targets=["decoder.decoder.postnet"],
                         batch_size=1, progress=False, seed=3)
    alpha = backend.config.spec_loss_alpha
    expected = torch.zeros(80, 80, dtype=torch.float64)
    for i, (j,) in enumerate(batch_plan(features, 1)):
        frames = features[j].mel.shape[0]
        eps = torch.randn((1, frames, 80), generator=_batch_generator(3, i))[0].double()
        expected += (2 * alpha / (80 * frames)) ** 2 * eps.T @ eps
    close(curv.tensors["decoder.decoder.postnet.G"], expected / len(features), rtol=1e-4, atol=1e-12)
    again = fit_curvature(backend, features, method="kfac", fisher="mc", targets=["decoder.decoder.postnet"],
                          batch_size=1, progress=False, seed=3)
    assert torch.equal(again.tensors["decoder.decoder.postnet.G"], curv.tensors["decoder.decoder.postnet.G"])


# --------------------------------------------------------------------------- data parallel
def _distributed_fit(rank: int, world: int, init_file: str, out: str) -> None:
    """One process of the 2-process fit (gloo); rank 0 saves the result."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        backend = toy_backend(attention=True)
        for method in ("ekfac", "diag"):
            curv = fit_curvature(backend, toy_features(lengths=(5, 3, 7, 4, 6)), method=method, batch_size=2,
                                 progress=False)
            if rank == 0:
                curv.save(f"{out}/{method}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_fit_equals_single_process_fit(tmp_path):
    """Two gloo processes sharing 3 batches (one takes 2, the other 1) give the single-process result."""
    import torch.multiprocessing as mp

    mp.spawn(_distributed_fit, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    backend = toy_backend(attention=True)
    for method in ("ekfac", "diag"):
        single = fit_curvature(backend, toy_features(lengths=(5, 3, 7, 4, 6)), method=method, batch_size=2,
                               progress=False)
        parallel = Curvature.load(tmp_path / f"{method}.safetensors", backend)
        assert parallel.num_utterances == single.num_utterances and parallel.info["processes"] == 2
        for key, value in single.tensors.items():
            if key.endswith((".QA", ".QG")):  # eigenvectors are defined up to sign: compare the spectra they give
                continue
            close(parallel.tensors[key], value, rtol=1e-5, atol=1e-8)


def test_symmetric_factors_are_stored_as_one_triangle(tmp_path):
    """A and G go to disk as their upper triangle: about half the bytes, read back exactly."""
    from safetensors import safe_open

    from tts_adapt.curvature.storage import Curvature, CurvatureLayer

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 40, generator=g), torch.randn(30, 30, generator=g)
    A, G = a @ a.T, b @ b.T
    layer = CurvatureLayer(name="lin", module="lin", param="lin.weight", kind="linear", out_features=30,
                           in_features=40, positions=1)
    curv = Curvature(method="kfac", fisher="empirical", layers=[layer], tensors={"lin.A": A, "lin.G": G},
                     num_utterances=1, fingerprint="x", targets=["lin"])
    path = tmp_path / "k.safetensors"
    curv.save(path)
    with safe_open(str(path), "pt") as fh:
        stored = sum(fh.get_tensor(k).numel() for k in fh.keys())
    assert stored == 40 * 41 // 2 + 30 * 31 // 2
    loaded = Curvature.load(path)
    assert torch.equal(loaded.factors("lin")["A"], A) and torch.equal(loaded.factors("lin")["G"], G)
