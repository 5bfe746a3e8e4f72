"""The curvature fit on any device: where its tensors are made, batches made by DataLoader workers, results on the CPU.

No GPU is needed: the ``meta`` device (shapes without data) stands in for a device other than the CPU, and a fit on
the CPU with ``meta`` as the default device shows every tensor the fit makes without saying where.
"""

from __future__ import annotations

import pytest
import test_curvature
import torch
from test_curvature import CHANNELS, ToyBackend, ToyModel, close, toy_backend, toy_features
from torch import nn

from tts_adapt.curvature import FitState, fit_curvature, linear_maps, record_linear_maps
from tts_adapt.curvature.curvature_config import CurvatureMethod
from tts_adapt.curvature.fit import _accumulate, _complete, _finish_phase, _fitting, _fold, _statistics, position_masks

METHODS = ("kfac", "ekfac", "diag")
fastpitch = test_curvature.fastpitch  # the tiny FastPitch fixture


def assert_equal(a, b):
    assert a.tensors.keys() == b.tensors.keys() and a.layers == b.layers and a.num_utterances == b.num_utterances
    for key, value in a.tensors.items():
        assert torch.equal(b.tensors[key], value), key


@pytest.mark.parametrize("method", METHODS)
def test_an_explicit_cpu_fit_equals_the_default_one(fastpitch, method):
    backend, features = fastpitch
    default = fit_curvature(backend, features, method=method, batch_size=2, progress=False)
    explicit = fit_curvature(backend, features, method=method, batch_size=2, progress=False, device="cpu")
    assert_equal(default, explicit)
    assert backend.device == torch.device("cpu")


def test_the_curvature_and_the_fit_state_file_are_on_the_cpu(tmp_path):
    """Whatever the device, the curvature comes back on the CPU in float32, and a fit state saved half-way is a
    CPU file that a later call continues."""
    backend, features = toy_backend(attention=True), toy_features(lengths=(5, 3, 7, 4, 6))
    state = FitState()
    assert fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False, state=state,
                         max_batches=4, device="cpu") is None
    state.save(tmp_path / "state.safetensors")
    state = FitState.load(tmp_path / "state.safetensors")
    assert all(t.device.type == "cpu" for t in [*state.sums.values(), *state.results.values()])
    curv = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False, state=state)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in curv.tensors.values())
    assert_equal(curv, fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False))


@pytest.mark.parametrize("method", METHODS)
def test_batches_made_by_worker_processes_give_the_same_curvature(method):
    backend, features = toy_backend(attention=True), toy_features(lengths=(5, 3, 7, 4, 6, 2, 8))
    in_process = fit_curvature(backend, features, method=method, batch_size=2, progress=False)
    workers = fit_curvature(backend, features, method=method, batch_size=2, progress=False, workers=2)
    assert_equal(in_process, workers)


def test_workers_continue_an_interrupted_fit_where_it_stopped():
    """A fit stopped after some batches and continued by worker processes makes the batches it has not seen."""
    backend, features = toy_backend(), toy_features(lengths=(5, 3, 7, 4, 6))
    state = FitState()
    assert fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False, state=state,
                         max_batches=2, workers=2) is None
    resumed = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False, state=state, workers=2)
    at_once = fit_curvature(backend, features, method="ekfac", batch_size=2, progress=False)
    for key, value in at_once.tensors.items():
        close(resumed.tensors[key], value, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- no tensor on a fixed device
class SpeakerToy(ToyModel):
    """The toy model (Linear, dilated Conv1d, self-attention) and a layer with one position per utterance (as a
    speaker projection), whose positions the hooks make rather than take from a mask."""

    TARGETS = ("inp", "conv", "attn", "out", "spk")

    def __init__(self):
        super().__init__(attention=True)
        self.spk = nn.Linear(CHANNELS, CHANNELS)

    def forward(self, mel, mask, trace=None):
        m = mask[..., None].to(mel.dtype)
        return super().forward(mel + self.spk((mel * m).sum(1) / m.sum(1))[:, None], mask, trace)


def speaker_toy() -> ToyBackend:
    torch.manual_seed(0)
    return ToyBackend(SpeakerToy().double())


def on_the_cpu(function):
    """``function`` making its tensors on the CPU under any default device."""
    def on_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return function(*args, **kwargs)
    return on_cpu


@pytest.mark.parametrize("method", METHODS)
def test_the_fit_makes_no_tensor_on_the_default_device(method, monkeypatch):
    """The whole fit on the CPU, with ``meta`` as the default device: a tensor made without a device (say
    ``torch.zeros(n)``, or ``torch.tensor(0.0)``) is a meta tensor, and the first operation mixing it with the
    fit's CPU tensors raises. Only the batches are made on the CPU by design (collated, by PyTorch's DataLoader)."""
    from tts_adapt.curvature import fit, hooks

    monkeypatch.setattr(hooks, "GRAM_BLOCK", 2)  # the toy's layers are too narrow for blocks of the usual width
    backend, features = speaker_toy(), toy_features()
    expected = fit_curvature(backend, features, method=method, targets=SpeakerToy.TARGETS, batch_size=2,
                             progress=False)
    backend.collate = on_the_cpu(backend.collate)
    monkeypatch.setattr(fit, "batch_stream", on_the_cpu(fit.batch_stream))
    with torch.device("meta"):
        assert torch.zeros(1).is_meta
        curv = fit_curvature(backend, features, method=method, targets=SpeakerToy.TARGETS, batch_size=2,
                             progress=False)
    assert_equal(expected, curv)


def test_the_statistics_follow_their_tensors_onto_another_device(monkeypatch):
    """The hooks, the statistics of every pass and their normalisation on the ``meta`` device: a tensor made on
    the CPU (without a device, or with ``.cpu()``) would meet the meta tensors and raise. (The fit's other steps
    need numbers: is the loss finite; the fitted curvature is returned on the CPU.)"""
    from tts_adapt.curvature import hooks

    # the Conv1d's A statistic asks where the utterances' edges are; on meta, assume every frame is one
    monkeypatch.setattr(torch.fx.experimental._config, "meta_nonzero_assume_all_nonzero", True)
    monkeypatch.setattr(hooks, "GRAM_BLOCK", 2)  # the toy's layers are too narrow for blocks of the usual width
    meta = torch.device("meta")
    backend, features, targets = speaker_toy(), toy_features(), SpeakerToy.TARGETS
    maps = linear_maps(backend.model, targets)
    batch = backend.collate(features).to(meta)
    backend.model.to(meta)
    weights = list(backend.model.parameters())
    results = {}
    with _fitting(backend.model, weights), record_linear_maps(backend.model, targets) as recorder:
        for phase in ("factors", "scalings", "diag"):
            recorder.clear()
            recorder.masks = position_masks(backend, batch)
            mel = batch.mel.double()
            loss = (((backend.model(mel, batch.frame_mask) - mel.flip(-1)) ** 2).sum(-1) * batch.frame_mask).sum()
            torch.autograd.grad(loss, weights)
            partial = {}
            for finite in (True, False):  # the padding zeroed by multiplication, and by selection
                _accumulate(partial, _statistics(phase, maps, recorder.calls, len(batch), results, finite))
            sums = _complete(_fold({}, partial, meta), maps, phase, meta)
            assert all(t.is_meta for t in sums.values())
            out = _finish_phase(phase, CurvatureMethod.EKFAC, sums, maps, world=1)
            assert all(t.is_meta for t in out.values())
            results.update(out)
    for m in maps:
        out_features, in_features = m.shape
        assert results[f"{m.name}.A"].shape == (in_features, in_features)
        assert results[f"{m.name}.QG"].shape == (out_features, out_features)
        assert results[f"{m.name}.S"].shape == results[f"{m.name}.diag"].shape == m.shape
