"""coqui-tts zoo models through the real loader: one tiny, randomly initialised model per zoo architecture.

Each row of :data:`ZOO_CASES` builds a model from the same coqui classes and config type as the zoo
model (small sizes), writes it as coqui's model manager leaves a downloaded model (``config.json``
with paths from the training machine, the checkpoint as coqui's ``save_checkpoint`` writes it, the
speaker files; for YourTTS a speaker encoder built from coqui's encoder class), loads it back by
path, and runs every stage on a batch of the tiny corpus: loss, synthesis, LoRA, K-FAC curvature
and two adaptation steps under the K-FAC penalty.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tts_adapt.models import ModelFolderError, TTSBackend
from tts_adapt.models.zoo import CONDITIONING_NOTES, SUPPORTED_MODELS, is_zoo_name
from zoo_models import ZOO_CASES, vits_config, write_zoo_folder

TEXT = "The quick brown fox jumps over the lazy dog."
#: The parts of each model that LoRA adapts (top-level modules) and that it must leave alone.
ADAPTED = {
    "coqui_fastpitch": ({"encoder", "decoder", "duration_predictor", "pitch_predictor"}, {"aligner"}),
    "vits": ({"text_encoder", "flow", "duration_predictor"}, {"posterior_encoder", "waveform_decoder"}),
    "yourtts": ({"text_encoder", "flow", "duration_predictor"}, {"posterior_encoder", "waveform_decoder",
                                                                  "speaker_encoder"}),
}
LOSS_PARTS = {
    "coqui_fastpitch": {"loss", "loss_spec", "loss_dur", "loss_pitch", "loss_aligner"},
    "vits": {"loss", "loss_kl", "loss_duration", "loss_mel"},
    "yourtts": {"loss", "loss_kl", "loss_duration"},
}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=list(ZOO_CASES), ids=list(ZOO_CASES))
def case(request) -> dict:
    return ZOO_CASES[request.param]


@pytest.fixture(scope="module")
def corpus_utts(tiny_corpus):
    from tts_adapt.data.readers import read_dataset

    utts, report = read_dataset(tiny_corpus, "auto", speaker_sets=["pretrain"], splits=["train"])
    assert report.ok, report.summary()
    return utts


@pytest.fixture(scope="module")
def zoo_folder(case, corpus_utts, tmp_path_factory) -> Path:
    speakers = sorted({u.speaker for u in corpus_utts})
    return write_zoo_folder(case, tmp_path_factory.mktemp("zoo") / case["backend"], speakers)


@pytest.fixture(scope="module")
def backend(zoo_folder) -> TTSBackend:
    return TTSBackend.from_pretrained(zoo_folder)


@pytest.fixture(scope="module")
def chosen(corpus_utts) -> list:
    """Two utterances of each of the first four speakers."""
    out, per_speaker = [], {}
    for u in corpus_utts:
        if per_speaker.get(u.speaker, 0) < 2 and (u.speaker in per_speaker or len(per_speaker) < 4):
            per_speaker[u.speaker] = per_speaker.get(u.speaker, 0) + 1
            out.append(u)
    return out


@pytest.fixture(scope="module")
def features(backend, chosen, feature_cache):
    """Features of the chosen utterances, through the backend's own feature extractor."""
    feats = backend.extract_features(chosen, feature_cache, progress=False)
    assert len(feats) == len(chosen) == 8
    return feats


# --------------------------------------------------------------------------- loading
def test_zoo_folder_loads_into_its_backend(case, backend, zoo_folder):
    assert backend.name == case["backend"]
    assert not backend.model.training
    assert backend.info["checkpoint"] == case["checkpoint"]
    assert backend.info["conditioning"] == CONDITIONING_NOTES[backend.speakers.kind]
    config = json.loads((zoo_folder / "config.json").read_text())
    assert backend.audio.sample_rate == config["audio"]["sample_rate"] == case["sample_rate"]
    state = torch.load(zoo_folder / case["checkpoint"], weights_only=False)["model"]
    own = backend.model.state_dict()
    assert own.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(own[k], v), k
    assert not hasattr(backend.model, "disc")  # VITS's discriminator is never built: the decoder stays frozen
    if case["backend"] == "yourtts":
        assert backend.speakers.kind == "d_vector" and backend.speakers.dim == 32
        d_vectors = json.loads((zoo_folder / "speakers.json").read_text())
        name = backend.speakers.names[0]
        mean = np.mean([v["embedding"] for v in d_vectors.values() if v["name"] == name], axis=0)
        assert np.allclose(backend.speakers.embeddings[0].numpy(), mean, atol=1e-6)
    else:
        assert backend.speakers.kind == "id_table"
        ids = json.loads((zoo_folder / "speaker_ids.json").read_text())
        assert backend.speakers.names == sorted(ids, key=ids.get)


def test_features_are_coquis(case, backend, features, chosen):
    """The mel the backend trains on is the one coqui computes for that model."""
    f = features[0]
    assert f.mel.shape[1] == 80 and torch.isfinite(f.mel).all()
    if case["backend"] == "coqui_fastpitch":
        from TTS.utils.audio import AudioProcessor

        ap = AudioProcessor(backend.config.audio)
        path = next(u.audio_path for u in chosen if u.utt_id == f.utt_id)
        expected = torch.from_numpy(ap.melspectrogram(ap.load_wav(path, sr=ap.sample_rate))).T
        assert torch.allclose(f.mel, expected, atol=1e-2)  # stored as float16
        assert (f.f0 > 0).any()
    else:
        from TTS.utils.audio.torch_transforms import wav_to_mel

        a = backend.config.audio
        wav = f.extras["wav"]
        expected = wav_to_mel(wav[None, None], a.fft_size, a.num_mels, a.sample_rate, a.hop_length, a.win_length,
                              a.mel_fmin, a.mel_fmax, center=False)[0].T
        assert f.mel.shape == expected.shape and torch.allclose(f.mel, expected, atol=2e-2)


# --------------------------------------------------------------------------- loss, synthesis, LoRA
def test_loss_of_a_batch(case, backend, features):
    batch = backend.collate(features[:4])
    backend.model.train()
    try:
        loss, parts = backend.loss(batch)
    finally:
        backend.model.eval()
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert LOSS_PARTS[case["backend"]] <= set(parts), parts
    assert all(math.isfinite(v) for v in parts.values())
    # evaluation is reproducible (VITS draws its random segment and posterior sample from a fixed seed)
    with torch.no_grad():
        assert float(backend.loss(batch)[0]) == float(backend.loss(batch)[0])


def test_synthesis(backend):
    speaker = backend.speakers.names[0]
    mel = backend.synthesize_mel(TEXT, speaker=speaker)
    assert mel.dim() == 2 and mel.shape[0] == 80 and mel.shape[1] > 0 and torch.isfinite(mel).all()
    assert torch.equal(mel, backend.synthesize_mel(TEXT, speaker=speaker))
    if backend.produces_waveform:
        wav = backend.synthesize_wav(TEXT, speaker=speaker)
        assert wav.dim() == 1 and wav.numel() > backend.audio.hop_length and torch.isfinite(wav).all()
    # through the Synthesizer (sentences, vocoder unless the model makes its own waveform)
    from tts_adapt.models.synthesis import Synthesizer

    audio = Synthesizer(backend, griffin_lim_iters=4).speak("Two sentences. Spoken here.", speaker=speaker)
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    assert len(audio) > 0.25 * backend.audio.sample_rate  # at least the pause between the sentences


def test_lora_targets(case, backend):
    adapted, frozen = ADAPTED[case["backend"]]
    targets = backend.lora_targets()
    modules = dict(backend.model.named_modules())
    tops = {t.split(".")[0] for t in targets}
    assert adapted <= tops and not (tops & frozen), tops
    for t in targets:
        m = modules[t]
        assert isinstance(m, (nn.Linear, nn.Conv1d, nn.MultiheadAttention)), t
        if isinstance(m, nn.Conv1d):
            assert m.dilation == (1,) and m.groups == 1, t
        assert ".post_" not in t, t  # the duration predictor's training-only posterior


def _copy(backend):
    """A backend sharing nothing mutable with ``backend`` (tests below change model and speakers)."""
    b = copy.copy(backend)
    b.model = copy.deepcopy(backend.model)
    return b


def test_new_voice_conditioning(case, backend, corpus_utts):
    """An ID-table model gets a new row (the mean of the others); YourTTS embeds the voice with its own
    speaker encoder."""
    b = _copy(backend)
    clips = [u.audio_path for u in corpus_utts[:2]]
    if case["backend"] == "yourtts":
        vec = b.embed_speaker(clips)
        assert vec.shape == (32,) and torch.isfinite(vec).all()
        assert b.add_speaker("target", vec) == {}
        assert torch.equal(b.speakers.embeddings[-1], vec)
    else:
        with pytest.raises(ValueError, match="speaker-ID table"):
            b.embed_speaker(clips)
        rows = b.model.emb_g.weight.shape[0]
        assert b.add_speaker("target") == {"emb_g": [rows]}
        assert b.model.emb_g.weight.shape[0] == rows + 1
        assert torch.allclose(b.model.emb_g.weight[-1], backend.model.emb_g.weight.mean(0))
    assert b.speakers.names[-1] == "target"
    assert b.synthesize_mel(TEXT, speaker="target").shape[0] == 80


def test_the_new_speaker_row_learns_through_the_frozen_layers(backend, features):
    """The gradient that trains a new voice's row of an ID-table model is the loss's whole derivative, also
    the part that reaches the row through frozen layers it conditions (VITS: posterior encoder and decoder,
    the KL and mel terms), so no speed-up may run those layers without gradients: autograd's gradient of
    the row against central differences of the loss along each of its coordinates (in eval mode the loss
    is deterministic)."""
    if backend.speakers.kind != "id_table":
        pytest.skip("a d-vector model has no speaker row to train")
    b = _copy(backend)
    row = b.add_speaker("target")["emb_g"][0]
    for p in b.model.parameters():
        p.requires_grad_(False)
    weight = b.model.emb_g.weight.requires_grad_(True)
    batch = b.collate([dataclasses.replace(f, speaker="target") for f in features[:4]])
    (grad,) = torch.autograd.grad(b.loss(batch)[0], weight)
    assert grad[:row].abs().sum() == 0 and grad[row].norm() > 0
    start, eps = weight[row].detach().clone(), 3e-3
    # VITS detaches the duration predictor's inputs (coqui's detach_dp_input): by design the row does not
    # learn from the duration loss, so that term is left out of the differences
    detached = ["loss_duration"] if b.name == "vits" and b.config.model_args.detach_dp_input else []

    def loss_at(offset: torch.Tensor) -> float:
        with torch.no_grad():
            weight[row] = start + offset
            loss, parts = b.loss(batch)
            return float(loss) - sum(parts[k] for k in detached)

    numeric = torch.tensor([(loss_at(eps * e) - loss_at(-eps * e)) / (2 * eps) for e in torch.eye(start.numel())])
    assert torch.linalg.norm(numeric - grad[row]) <= 0.01 * torch.linalg.norm(grad[row])


# --------------------------------------------------------------------------- curvature and adaptation
def test_kfac_fit_then_two_adaptation_steps_and_reload(case, backend, zoo_folder, features, tiny_target_clips,
                                                     feature_cache, tmp_path):
    """K-FAC of every LoRA target on a few utterances; then ``adapt`` (as ``tts-adapt adapt --model <zoo folder>``)
    for two steps under the K-FAC penalty, and the adapter restored onto a freshly loaded model."""
    from tts_adapt.adapt.adapt_config import AdaptConfig
    from tts_adapt.adapt.adapter import TARGET_FILE, load_adapter
    from tts_adapt.adapt.train import adapt
    from tts_adapt.curvature import fit_curvature
    from tts_adapt.curvature.hooks import linear_maps

    targets = backend.lora_targets()
    curv = fit_curvature(_copy(backend), features, method="kfac", batch_size=4, progress=False)
    maps = {m.name: m for m in linear_maps(backend.model, targets)}
    assert curv.num_utterances == len(features) and [layer.name for layer in curv.layers] == list(maps)
    for name, m in maps.items():
        A, G = curv.factors(name)["A"], curv.factors(name)["G"]
        assert A.shape == (m.in_features, m.in_features) and G.shape == (m.out_features, m.out_features)
        assert torch.isfinite(A).all() and torch.isfinite(G).all()
    assert sum(float(curv.factors(n)["G"].trace()) for n in maps) > 0
    curv.save(tmp_path / "kfac.safetensors")

    config = AdaptConfig(strategy="kfac", lam=10.0, rank=2, alpha=4.0, steps=2, batch_size=4, lr=1e-2, val_every=2)
    card = adapt(tiny_target_clips, tmp_path / "adapter", model=zoo_folder, config=config,
                 curvature=tmp_path / "kfac.safetensors", cache_dir=feature_cache, progress=False)
    assert card["steps"] == 2 and all(math.isfinite(r["loss"]) and r["penalty"] >= 0 for r in card["curve"])
    assert card["targets"] == targets

    fresh = TTSBackend.from_pretrained(zoo_folder)
    base_mel = fresh.synthesize_mel(TEXT, speaker=fresh.speakers.names[0])
    load_adapter(fresh, tmp_path / "adapter")
    assert fresh.speakers.names[-1] == "target"
    lora_b = [p for n, p in fresh.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the trained update came back
    assert not torch.equal(fresh.synthesize_mel(TEXT, speaker=fresh.speakers.names[0]), base_mel)
    assert torch.isfinite(fresh.synthesize_mel(TEXT, speaker="target")).all()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter" / TARGET_FILE), "pt") as fh:
        saved = {k: fh.get_tensor(k) for k in fh.keys()}
    if fresh.speakers.kind == "id_table":  # the new row: trained, saved in the adapter, restored
        row = int(saved["speaker_row"][0])
        assert row == len(fresh.speakers.names) - 1
        restored = fresh.model.emb_g(torch.tensor([row]))[0]
        start = TTSBackend.from_pretrained(zoo_folder).model.emb_g.weight.mean(0)
        assert not torch.allclose(restored, start)
    else:  # YourTTS: the target's d-vector from its own speaker encoder
        assert saved["d_vector"].shape == (32,) and torch.equal(fresh.speakers.embeddings[-1], saved["d_vector"])


def test_command_line_with_a_zoo_folder(case, zoo_folder, tiny_corpus, tiny_target_clips, feature_cache, tmp_path):
    """``--model <zoo folder>``: speak (YourTTS zero-shot from a clip through its own encoder) and fit K-FAC."""
    import soundfile as sf

    from tts_adapt.cli import main
    from tts_adapt.curvature import Curvature

    voice = (["--speaker-wav", str(sorted(tiny_target_clips.glob("*.wav"))[0])] if case["backend"] == "yourtts"
             else ["--speaker", TTSBackend.from_pretrained(zoo_folder).speakers.names[0]])
    out = tmp_path / "hello.wav"
    assert main(["synthesize", "--model", str(zoo_folder), "--text", "Hello there.", *voice, "--out", str(out)]) == 0
    assert sf.info(out).samplerate == case["sample_rate"] and sf.info(out).duration > 0
    kfac = tmp_path / "kfac.safetensors"
    assert main(["fit-curvature", "--model", str(zoo_folder), "--data", str(tiny_corpus), "--num-utterances", "4",
                 "--batch-size", "2", "--workers", "1", "--cache-dir", str(feature_cache), "--out", str(kfac),
                 "-q"]) == 0
    curv = Curvature.load(kfac, TTSBackend.from_pretrained(zoo_folder))
    assert curv.num_utterances == 4 and curv.backend == case["backend"]


def test_create_builds_a_new_model_of_a_coqui_config():
    from tts_adapt.models import get_backend

    config = vits_config(16000, use_speaker_embedding=True, speaker_embedding_channels=8)
    config.speakers = ["VCTK_p225", "VCTK_p226"]
    backend = get_backend("vits").create(config=config)
    assert backend.speakers.names == ["VCTK_p225", "VCTK_p226"] and backend.audio.sample_rate == 16000
    assert backend.speakers.index("p226") == 1  # the VCTK reader's name of coqui's VCTK_p226
    with pytest.raises(ValueError, match="coqui config"):
        get_backend("vits").create()
    with pytest.raises(ModelFolderError, match="adapter"):
        backend.save_pretrained("anywhere")


# --------------------------------------------------------------------------- bad input
def test_zoo_folder_missing_its_checkpoint_or_config(case, zoo_folder, tmp_path):
    for missing, expected in ((case["checkpoint"], "checkpoint"), ("config.json", r"config\.json")):
        folder = tmp_path / missing
        shutil.copytree(zoo_folder, folder)
        (folder / missing).unlink()
        with pytest.raises(ModelFolderError, match=expected):
            TTSBackend.from_pretrained(folder)
    speaker_file = "speakers.json" if case["backend"] == "yourtts" else "speaker_ids.json"
    folder = tmp_path / "no-speakers"
    shutil.copytree(zoo_folder, folder)
    (folder / speaker_file).unlink()
    with pytest.raises(ModelFolderError, match=speaker_file.replace(".", r"\.")):
        TTSBackend.from_pretrained(folder)


class _RunsCode:
    """An object whose unpickling runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_pitch_statistics_load_without_running_code(tmp_path):
    from types import SimpleNamespace

    from tts_adapt.models.zoo_fastpitch import CoquiFastPitchBackend, read_pitch_stats

    # as coqui's F0Dataset writes them: np.save of a dict of numpy numbers (pickled)
    np.save(tmp_path / "coqui.npy", {"mean": np.float64(142.5), "std": np.float32(38.0)}, allow_pickle=True)
    assert read_pitch_stats(tmp_path / "coqui.npy") == (142.5, 38.0)
    np.save(tmp_path / "plain.npy", np.array([120.0, 30.0]))
    assert read_pitch_stats(tmp_path / "plain.npy") == (120.0, 30.0)
    folder = tmp_path / "model"
    folder.mkdir()
    np.save(folder / "pitch_stats.npy", {"mean": 142.5, "std": 38.0}, allow_pickle=True)
    stats = CoquiFastPitchBackend.zoo_stats(folder, SimpleNamespace(audio=SimpleNamespace(num_mels=80)))
    assert (stats.f0_mean, stats.f0_std) == (142.5, 38.0)

    marker = tmp_path / "ran.txt"
    np.save(tmp_path / "evil.npy", {"mean": _RunsCode(marker), "std": 1.0}, allow_pickle=True)
    with pytest.raises(ModelFolderError, match=r"evil\.npy: not coqui's F0 statistics \(unreadable: it names "
                                               r".*write_text, which could run code\)"):
        read_pitch_stats(tmp_path / "evil.npy")
    assert not marker.exists()
    for name, value in (("words", np.array(["a", "b"])), ("nan", np.array([np.nan, 1.0])),
                        ("keys", {"mu": 1.0, "sigma": 2.0})):
        np.save(tmp_path / f"{name}.npy", value, allow_pickle=True)
        with pytest.raises(ModelFolderError, match=rf"{name}\.npy: not coqui's F0 statistics"):
            read_pitch_stats(tmp_path / f"{name}.npy")


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    from tts_adapt.models.zoo import load_coqui_weights

    model = nn.Linear(2, 2)
    marker = tmp_path / "ran.txt"
    torch.save({"model": model.state_dict(), "extra": _RunsCode(marker)}, tmp_path / "model_file.pth")
    with pytest.raises(ModelFolderError, match=r"model_file\.pth: cannot be read as a coqui-tts checkpoint"):
        load_coqui_weights(model, tmp_path / "model_file.pth", tmp_path / "config.json")
    assert not marker.exists()
    torch.save({"model": model.state_dict(), "config": {"audio": {"sample_rate": 22050}}, "step": 3},
               tmp_path / "fine.pth")
    load_coqui_weights(nn.Linear(2, 2), tmp_path / "fine.pth", tmp_path / "config.json")


def test_zoo_names():
    assert is_zoo_name("tts_models/en/vctk/vits") and is_zoo_name("vocoder_models/en/vctk/hifigan_v2", "vocoder_models")
    assert not is_zoo_name("work/base_model") and not is_zoo_name("tts_models/en/vctk")
    with pytest.raises(ModelFolderError, match="not a coqui-tts model name"):
        TTSBackend.from_pretrained("tts_models/en/nowhere/nothing")


def test_a_zoo_name_loads_the_folder_coquis_manager_returns(case, zoo_folder, monkeypatch):
    """By name, through coqui's ModelManager (here returning its already downloaded copy): the same loader."""
    from TTS.utils.manage import ModelManager

    names = {backend: name for name, backend in SUPPORTED_MODELS.items()}
    asked = []

    def cached(self, name):
        asked.append(name)
        return zoo_folder / case["checkpoint"], zoo_folder / "config.json", {}

    monkeypatch.setattr(ModelManager, "download_model", cached)
    backend = TTSBackend.from_pretrained(names[case["backend"]])
    assert asked == [names[case["backend"]]] and backend.name == case["backend"]
    assert backend.info["zoo_folder"] == str(zoo_folder)


def test_a_zoo_name_without_network_says_what_to_do(monkeypatch):
    import requests
    from TTS.utils.manage import ModelManager

    def offline(self, name):
        raise requests.ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(ModelManager, "download_model", offline)
    with pytest.raises(ModelFolderError, match="connected machine") as err:
        TTSBackend.from_pretrained("tts_models/en/vctk/vits")
    assert "tts_models--en--vctk--vits" in str(err.value) and "ConnectionError" in str(err.value)
