"""The toolkit on a CUDA GPU against the same work on the CPU (skipped without a GPU; scripts/gpu-check.sh runs
them where there is one).

Tolerances: cuDNN convolutions run in TF32 by default (10-bit mantissa), and GPU reductions sum in another
order, so a GPU agrees with the CPU to about 1e-3 relative per operation, not bit for bit; a few training steps
compound that, which the looser tolerances of the adaptation checks allow for. Mixed precision (bf16, fp16)
is held to finishing with a validation loss within 10 % of fp32's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.cuda


def test_adaptation_on_cuda_matches_the_cpu(tiny_model, tiny_target_clips, feature_cache, tmp_path):
    from tts_adapt.adapt.train import AdaptConfig, adapt

    config = AdaptConfig(strategy="lora", steps=3, val_every=1)
    runs = {d: adapt(tiny_target_clips, tmp_path / d, tiny_model, config, cache_dir=feature_cache, progress=False,
                     device=d) for d in ("cpu", "cuda")}
    assert runs["cuda"]["device"] == "cuda"
    cpu, gpu = (np.array([r["loss"] for r in runs[d]["curve"]]) for d in ("cpu", "cuda"))
    np.testing.assert_allclose(gpu, cpu, rtol=2e-2)
    assert runs["cuda"]["best_val_loss"] == pytest.approx(runs["cpu"]["best_val_loss"], rel=2e-2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_adaptation_trains(precision, tiny_model, tiny_target_clips, feature_cache, tmp_path):
    from tts_adapt.adapt.train import AdaptConfig, adapt

    config = AdaptConfig(strategy="lora", steps=3, val_every=1)
    fp32 = adapt(tiny_target_clips, tmp_path / "fp32", tiny_model, config, cache_dir=feature_cache, progress=False,
                 device="cuda")
    mixed = adapt(tiny_target_clips, tmp_path / precision, tiny_model, config, cache_dir=feature_cache,
                  progress=False, device="cuda", precision=precision)
    assert mixed["precision"] == precision and np.isfinite(mixed["best_val_loss"])
    assert mixed["best_val_loss"] == pytest.approx(fp32["best_val_loss"], rel=0.1)


def test_kfac_penalty_adaptation_on_cuda(tiny_model, tiny_corpus, tiny_target_clips, feature_cache, tmp_path):
    """Curvature fitted on the GPU (factors accumulated there, saved from the CPU) equals the CPU fit, and a
    K-FAC adaptation on the GPU computes its penalty there."""
    from tts_adapt.adapt.train import AdaptConfig, adapt
    from tts_adapt.curvature import Curvature
    from tts_adapt.curvature.run import fit_curvature_file

    paths = {}
    for device in ("cpu", "cuda"):
        paths[device] = tmp_path / f"{device}.safetensors"
        fit_curvature_file(tiny_model, tiny_corpus, paths[device], num_utterances=4, cache_dir=feature_cache,
                           workers=1, progress=False, device=device)
    cpu, gpu = (Curvature.load(paths[d]) for d in ("cpu", "cuda"))
    for key, value in cpu.tensors.items():
        assert gpu.tensors[key].device.type == "cpu"
        torch.testing.assert_close(gpu.tensors[key], value, rtol=1e-3, atol=1e-5 * float(value.abs().max()))
    run = adapt(tiny_target_clips, tmp_path / "kfac", tiny_model, AdaptConfig(strategy="kfac", steps=2, val_every=1),
                curvature=paths["cuda"], cache_dir=feature_cache, progress=False, device="cuda")
    assert all(np.isfinite(r["penalty"]) for r in run["curve"])


def test_pretraining_on_cuda_with_loader_workers_and_bf16(tiny_corpus, feature_cache, tmp_path):
    from conftest import TINY_PRETRAIN
    from tts_adapt.models.pretrain import pretrain

    pretrain(tiny_corpus, tmp_path / "m", TINY_PRETRAIN, cache_dir=feature_cache, workers=1, progress=False,
             device="cuda", precision="bf16", loader_workers=2)
    info = json.loads((tmp_path / "m" / "tts_adapt.json").read_text())["info"]
    assert info["device"] == "cuda" and info["precision"] == "bf16" and info["steps"] == TINY_PRETRAIN.steps


def test_synthesis_on_cuda_matches_the_cpu(tiny_model):
    from tts_adapt.models.synthesis import Synthesizer

    mels = {}
    for device in ("cpu", "cuda"):
        synth = Synthesizer(tiny_model, device=device)
        assert synth.backend.device.type == device
        name = synth.backend.speakers.names[0]
        mels[device] = synth.mel("Hello there.", speaker=name)
        wav = synth.speak("Hello there.", speaker=name)
        assert isinstance(wav, np.ndarray) and wav.dtype == np.float32 and len(wav) > 0
    assert mels["cuda"].device.type == "cpu"
    if mels["cuda"].shape == mels["cpu"].shape:  # a duration rounded the other way changes the length
        torch.testing.assert_close(mels["cuda"], mels["cpu"], rtol=1e-2, atol=1e-2)
