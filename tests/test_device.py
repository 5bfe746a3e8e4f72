"""The one device setting: resolution and refusals, every model-running command with an explicit
``--device cpu``, the same results as the default, mixed precision on the CPU, and checks that catch a tensor
created on a fixed device in the training step and the penalties (the meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tts_adapt.device import (DeviceError, autocast, check_precision, grad_scaler, module_device, resolve_device,
                              to_device)


# --------------------------------------------------------------------------- resolution
def test_auto_is_the_cpu_without_a_gpu_and_cpu_is_the_cpu():
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("spec, words", [("cuda", "sees no CUDA GPU"), ("cuda:1", "sees no CUDA GPU"),
                                         ("gpu", "not a device"), ("xla", "runs on")])
def test_devices_this_machine_lacks_are_refused_with_the_reason(spec, words):
    with pytest.raises(DeviceError, match=words):
        resolve_device(spec)


def test_precision_fp16_needs_a_gpu_and_bf16_runs_on_the_cpu():
    cpu = torch.device("cpu")
    with pytest.raises(DeviceError, match="fp16 needs a GPU"):
        check_precision("fp16", cpu)
    with pytest.raises(DeviceError, match="use one of"):
        check_precision("fp8", cpu)
    assert check_precision("bf16", cpu) == "bf16" and check_precision("fp32", cpu) == "fp32"
    assert grad_scaler(cpu, "fp32") is None and grad_scaler(cpu, "bf16") is None
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.float32


def test_to_device_moves_batches_and_containers(tiny_model, tiny_corpus, feature_cache):
    from tts_adapt.models.base import TTSBackend

    backend = TTSBackend.from_pretrained(tiny_model)
    feats = _features(backend, tiny_corpus, feature_cache, 2)
    batch = backend.collate(feats)
    moved = batch.to("meta")
    assert moved.mel.device.type == "meta" and moved.tokens.device.type == "meta" and moved.speakers == batch.speakers
    assert moved.frame_mask.device.type == "meta" and moved.token_mask.device.type == "meta"
    nested = to_device({"a": [torch.ones(1), (torch.zeros(1), "x")]}, torch.device("meta"))
    assert nested["a"][0].is_meta and nested["a"][1][0].is_meta and nested["a"][1][1] == "x"
    assert backend.device == torch.device("cpu") == module_device(backend.model)
    assert backend.to("meta").device.type == "meta"


def _features(backend, corpus, cache, n):
    from tts_adapt.data.readers import read_dataset

    utts, _ = read_dataset(corpus, "tts_adapt", speaker_sets=["pretrain"], validate_audio=False)
    return backend.extract_features(utts[:n], cache, progress=False)


# --------------------------------------------------------------------------- every command
def test_every_model_command_runs_with_an_explicit_device_cpu(tiny_corpus, tiny_model, tiny_target_clips,
                                                             feature_cache, tmp_path, monkeypatch):
    """pretrain, fit-curvature, adapt, synthesize and evaluate run for real on ``--device cpu``; sweep,
    quickstart and demo hand it to their Python API (they run for real, with it, in the recipe tests)."""
    from tts_adapt.cli import main

    cache = ["--cache-dir", str(feature_cache)]
    cpu = ["--device", "cpu"]
    model = tmp_path / "model"
    assert main(["pretrain", "--data", str(tiny_corpus), "--out", str(model), "--size", "tiny", "--steps", "2",
                 "--batch-size", "4", "--checkpoint-every", "2", "--warmup-steps", "1", "--val-utterances", "4",
                 "--workers", "1", "--loader-workers", "1", "-q", *cache, *cpu]) == 0
    info = json.loads((model / "tts_adapt.json").read_text())["info"]
    assert info["steps"] == 2 and info["device"] == "cpu" and info["precision"] == "fp32"

    kfac = tmp_path / "kfac.safetensors"
    assert main(["fit-curvature", "--model", str(tiny_model), "--data", str(tiny_corpus), "--out", str(kfac),
                 "--num-utterances", "4", "--workers", "1", "-q", *cache, *cpu]) == 0
    adapter = tmp_path / "adapter"
    assert main(["adapt", "--target-dir", str(tiny_target_clips), "--out", str(adapter), "--model", str(tiny_model),
                 "--strategy", "kfac", "--curvature", str(kfac), "--steps", "2", "--val-every", "1", "-q",
                 *cache, *cpu]) == 0
    run = json.loads((adapter / "run.json").read_text())
    assert run["device"] == "cpu" and run["precision"] == "fp32"
    wav = tmp_path / "hello.wav"
    assert main(["synthesize", "--model", str(tiny_model), "--adapter", str(adapter), "--text", "Hello there.",
                 "--out", str(wav), *cpu]) == 0 and wav.stat().st_size > 0
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(tiny_corpus), "--out", str(tmp_path / "ev"),
                 "--per-speaker", "1", "--max-speakers", "1", "--sets", "pretrain", "-q", *cpu]) == 0

    seen = {}

    def record(name):
        def api(*args, **kwargs):
            seen[name] = kwargs.get("device")
            return {"cells": [], "seconds": 0.0} if name == "sweep" else None
        return api

    monkeypatch.setattr("tts_adapt.evaluate.sweep.run_sweep", record("sweep"))
    monkeypatch.setattr("tts_adapt.evaluate.sweep.to_markdown", lambda *a: "")
    monkeypatch.setattr("tts_adapt.quickstart.run_quickstart", record("quickstart"))
    monkeypatch.setattr("tts_adapt.demo.app.run_demo", record("demo"))
    assert main(["sweep", "--out", str(tmp_path / "sw"), "--target-dir", str(tiny_target_clips), "--heldout-dir",
                 str(tiny_target_clips), *cpu]) == 0
    assert main(["quickstart", "--workdir", str(tmp_path / "qs"), *cpu]) == 0
    assert main(["demo", "--adapters", str(tmp_path), *cpu]) == 0
    assert seen == {"sweep": "cpu", "quickstart": "cpu", "demo": "cpu"}


def test_a_device_the_machine_lacks_is_refused_before_any_work(tiny_target_clips, tiny_model, tmp_path, capsys):
    from tts_adapt.cli import main

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    out = tmp_path / "adapter"
    assert main(["adapt", "--target-dir", str(tiny_target_clips), "--out", str(out), "--model", str(tiny_model),
                 "--strategy", "lora", "--steps", "1", "--device", "cuda", "-q"]) == 1
    assert "--device cuda: PyTorch sees no CUDA GPU" in capsys.readouterr().err
    assert not out.exists()
    assert main(["adapt", "--target-dir", str(tiny_target_clips), "--out", str(out), "--model", str(tiny_model),
                 "--strategy", "lora", "--steps", "1", "--precision", "fp16", "-q"]) == 1
    assert "fp16 needs a GPU" in capsys.readouterr().err


# --------------------------------------------------------------------------- same results
def test_explicit_cpu_equals_the_default_and_bf16_trains(tiny_model, tiny_target_clips, feature_cache, tmp_path):
    """The device setting changes nothing on the CPU: an adapter made with ``device="cpu"`` is bit-identical
    to one made with the default; a bf16 run (autocast on the CPU) trains to a finite loss close to it."""
    from safetensors.torch import load_file

    from tts_adapt.adapt.train import AdaptConfig, adapt

    config = AdaptConfig(strategy="lora", steps=3, val_every=1)
    runs = {}
    for name, kwargs in {"default": {}, "cpu": {"device": "cpu"}, "bf16": {"device": "cpu", "precision": "bf16"}
                         }.items():
        runs[name] = adapt(tiny_target_clips, tmp_path / name, tiny_model, config, cache_dir=feature_cache,
                           progress=False, **kwargs)
    weights = {n: load_file(str(tmp_path / n / "adapter_model.safetensors")) for n in runs}
    assert weights["default"].keys() == weights["cpu"].keys()
    assert all(torch.equal(weights["default"][k], weights["cpu"][k]) for k in weights["default"])
    assert runs["default"]["curve"] == runs["cpu"]["curve"]
    assert runs["bf16"]["precision"] == "bf16"
    bf16_loss, fp32_loss = runs["bf16"]["best_val_loss"], runs["default"]["best_val_loss"]
    assert torch.isfinite(torch.tensor(bf16_loss)) and abs(bf16_loss - fp32_loss) < 0.1 * abs(fp32_loss)


def test_pretraining_through_dataloader_workers_equals_in_process(tiny_corpus, feature_cache, tmp_path):
    """Batches made ahead by DataLoader workers are the batches the loop would make itself."""
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.pretrain import pretrain

    from conftest import TINY_PRETRAIN

    weights = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        pretrain(tiny_corpus, out, TINY_PRETRAIN, cache_dir=feature_cache, workers=1, progress=False,
                 device="cpu", loader_workers=workers)
        weights[workers] = TTSBackend.from_pretrained(out).model.state_dict()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


# --------------------------------------------------------------------------- fixed devices
PACKAGE = Path(__file__).resolve().parent.parent / "tts_adapt"
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor, torch.eye, torch.rand,
             torch.randn, torch.randint, torch.linspace}


class ToolkitFactoriesOnMeta(torch.overrides.TorchFunctionMode):
    """Every tensor the toolkit's own code creates without naming a device lands on the meta device (coqui's
    and PyTorch's code are left alone: their CPU index tensors, e.g. CTC targets, are deliberate). With model
    and data on the CPU, such a tensor meets CPU tensors and fails the computation, as it would on a GPU."""

    def __init__(self, root: Path = PACKAGE):
        super().__init__()
        self.root = root

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in FACTORIES and kwargs.get("device") is None and self._from_toolkit():
            kwargs["device"] = "meta"
        return func(*args, **kwargs)

    def _from_toolkit(self) -> bool:
        import sys

        frame = sys._getframe(2)  # the caller of the factory (factories are C functions: no frame between)
        while frame is not None and frame.f_code.co_filename.endswith(("torch/overrides.py", "torch/_tensor.py")):
            frame = frame.f_back
        return frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(self.root)


def _lora_step_parts(tiny_model, tiny_corpus, feature_cache, strategy_name: str, curvature):
    """A LoRA-wrapped tiny FastPitch (CPU), a CPU batch and the strategy, as the adaptation loop has them."""
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.strategies import get_strategy
    from tts_adapt.models.base import TTSBackend

    backend = TTSBackend.from_pretrained(tiny_model)
    batch = backend.collate(_features(backend, tiny_corpus, feature_cache, 2))
    strategy = get_strategy(strategy_name).from_config(AdaptConfig(strategy=strategy_name, lam=10.0), curvature)
    strategy.wrap(backend.model, list(curvature.targets) if curvature is not None else backend.lora_targets())
    return backend, batch, strategy


@pytest.fixture(scope="module")
def kfac_curvature(tiny_model, tiny_corpus, feature_cache, tmp_path_factory):
    from tts_adapt.curvature import Curvature
    from tts_adapt.curvature.run import fit_curvature_file

    path = tmp_path_factory.mktemp("kfac") / "kfac.safetensors"
    fit_curvature_file(tiny_model, tiny_corpus, path, num_utterances=4, cache_dir=feature_cache, workers=1,
                       progress=False)
    return Curvature.load(path)


def _step_total(backend, batch, strategy):
    """Loss + penalty of one adaptation step, and its backward."""
    from types import SimpleNamespace

    loss, _ = backend.loss(batch)
    terms = strategy.loss_terms(SimpleNamespace(params=strategy.trainable_parameters()), batch)
    total = loss + sum(t.weight * t.value for t in terms)
    total.backward()
    return total.detach()


def test_the_training_step_creates_no_tensor_on_a_fixed_device(tiny_model, tiny_corpus, feature_cache,
                                                               kfac_curvature):
    """Forward, loss, penalty and backward of an adaptation step with every tensor the toolkit creates without
    naming a device landing on the meta device: model and batch are on the CPU, so such a tensor (a mask, a
    zero, an index made where the data are not) meets CPU tensors and fails the step, or (an index on the meta
    device reads garbage) changes its loss."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    backend, batch, strategy = _lora_step_parts(tiny_model, tiny_corpus, feature_cache, "kfac", kfac_curvature)
    strategy.on_train_start(SimpleNamespace(device=torch.device("cpu")))
    backend.model.eval()  # no dropout: both passes compute the same
    reference = _step_total(backend, batch, strategy)
    grads = {n: p.grad.clone() for n, p in strategy.trainable_parameters().items() if p.grad is not None}
    backend.model.zero_grad()
    with ToolkitFactoriesOnMeta():
        total = _step_total(backend, batch, strategy)
    assert torch.isfinite(reference) and torch.equal(total, reference)
    assert grads and all(torch.equal(p.grad, grads[n]) for n, p in strategy.trainable_parameters().items()
                         if n in grads)


def test_the_meta_check_catches_a_tensor_made_without_its_device(tiny_model, tiny_corpus, feature_cache,
                                                                 monkeypatch):
    """The check above fails when the speaker rows are weighted by a tensor made without its device (the kind
    of bug it is there to find; made here by code in this file, so the check watches this file)."""
    from tts_adapt.models.speakers import SpeakerTable

    backend, batch, strategy = _lora_step_parts(tiny_model, tiny_corpus, feature_cache, "lora", None)
    backend.model.eval()
    reference = _step_total(backend, batch, strategy)

    def careless(self, names, device="cpu"):  # a weighting of the rows, made without its device
        weights = torch.ones(len(names), 1)
        return {"d_vectors": (self.embeddings[[self.index(n) for n in names]] * weights).to(device),
                "speaker_ids": None}

    monkeypatch.setattr(SpeakerTable, "conditioning", careless)
    assert torch.equal(_step_total(backend, batch, strategy), reference)  # harmless while all is on the CPU
    with pytest.raises(RuntimeError, match="meta"):
        with ToolkitFactoriesOnMeta(root=Path(__file__).resolve()):
            _step_total(backend, batch, strategy)


@pytest.mark.parametrize("strategy", ["l2", "diag", "kfac", "ekfac"])
def test_every_penalty_is_computed_where_its_adapter_is(strategy, tiny_model, tiny_corpus, feature_cache,
                                                        tmp_path_factory):
    """Adapter and curvature moved to the meta device: the penalty is computed there (a factor or a zero left
    on the CPU would fail), and its value is on the adapter's device."""
    from types import SimpleNamespace

    from tts_adapt.adapt.lora import lora_factors
    from tts_adapt.adapt.strategies import get_strategy
    from tts_adapt.curvature import Curvature
    from tts_adapt.curvature.run import fit_curvature_file

    curvature = None
    method = get_strategy(strategy).curvature_method
    if method:
        path = tmp_path_factory.mktemp(method) / f"{method}.safetensors"
        fit_curvature_file(tiny_model, tiny_corpus, path, method=method, num_utterances=4, cache_dir=feature_cache,
                           workers=1, progress=False)
        curvature = Curvature.load(path)
    backend, batch, strat = _lora_step_parts(tiny_model, tiny_corpus, feature_cache, strategy, curvature)
    backend.to("meta")
    strat.on_train_start(SimpleNamespace(device=torch.device("meta")))
    value = strat(lora_factors(strat.model))
    assert value.is_meta and value.dim() == 0
