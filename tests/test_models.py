"""Model backends: save/load, synthesis, speaker conditioning, errors, LoRA targets, loss, vocoder.

Written as peft writes its tuner tests: a table of tiny model configurations
(:data:`MODEL_CASES`) and one test body per behaviour, run for every row.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from tts_adapt.data.audio import AudioConfig, LogMel
from tts_adapt.data.samples import Utterance
from tts_adapt.evaluate.metrics import f0_track
from tts_adapt.models import Batch, FastPitchBackend, ModelFolderError, TTSBackend, get_backend
from tts_adapt.models.base import CHECKPOINT_FILE, CONFIG_FILE, META_FILE
from tts_adapt.models.features import FeatureStats, extract_f0, extract_features, fingerprint
from tts_adapt.models.pretrain import split_utterances
from tts_adapt.models.pretrain_config import PretrainConfig
from tts_adapt.models.speakers import SPEAKERS_FILE, SpeakerTable, UnknownSpeakerError
from tts_adapt.models.features import F0_MAX, F0_MIN
from tts_adapt.models.fastpitch import UNVOICED_SYMBOLS
from tts_adapt.models.synthesis import Synthesizer
from tts_adapt.models.vocoder import GriffinLimVocoder, WorldVocoder

AUDIO = AudioConfig(n_mels=PretrainConfig.n_mels)  # the features pretrain() extracts, so the cache is shared
SPEAKERS = ["alice", "bob", "carol"]
TEXT = "The quick brown fox jumps over the lazy dog."
REPO_ROOT = Path(__file__).resolve().parents[1]

#: One row per tiny model configuration; every test below runs for each row.
MODEL_CASES = {
    "fastpitch-tiny-d_vector": dict(backend="fastpitch", size="tiny", conditioning="d_vector"),
    "fastpitch-tiny-id_table": dict(backend="fastpitch", size="tiny", conditioning="id_table"),
    "glowtts-tiny-d_vector": dict(backend="glowtts", size="tiny", conditioning="d_vector"),
    "glowtts-tiny-id_table": dict(backend="glowtts", size="tiny", conditioning="id_table"),
}
#: Named parts of each backend's training loss.
EXPECTED_LOSS_PARTS = {
    "fastpitch": {"loss", "loss_spec", "loss_dur", "loss_pitch", "loss_aligner"},
    "glowtts": {"loss", "log_mle", "loss_dur"},
}
#: Top-level modules each backend must offer to LoRA.
EXPECTED_TARGET_PREFIXES = {
    "fastpitch": {"encoder", "decoder", "duration_predictor", "pitch_predictor"},
    "glowtts": {"encoder", "decoder"},
}


def random_unit_vectors(n: int, dim: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def speaker_table(conditioning: str, names: list[str], seed: int = 0) -> SpeakerTable:
    if conditioning == "d_vector":
        return SpeakerTable("d_vector", list(names), random_unit_vectors(len(names), seed=seed))
    return SpeakerTable("id_table", list(names))


def neutral_stats() -> FeatureStats:
    return FeatureStats(torch.full((AUDIO.n_mels,), -4.0), torch.full((AUDIO.n_mels,), 2.0), 150.0, 30.0)


def make_backend(case: dict, names=SPEAKERS, stats: FeatureStats | None = None, seed: int = 0) -> TTSBackend:
    torch.manual_seed(seed)
    backend = get_backend(case["backend"]).create(AUDIO, stats or neutral_stats(), speaker_table(case["conditioning"], names),
                                                  size=case["size"])
    # Glow-TTS starts as an identity flow (zero-initialised coupling outputs), deaf to the
    # speaker until trained; a small seeded perturbation stands in for training
    with torch.no_grad():
        for p in backend.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    backend.model.eval()
    return backend


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=list(MODEL_CASES), ids=list(MODEL_CASES))
def case(request) -> dict:
    return MODEL_CASES[request.param]


@pytest.fixture(scope="module")
def backend(case) -> TTSBackend:
    """A fresh tiny model of the case, in eval mode (tests must not change its weights)."""
    return make_backend(case)


@pytest.fixture(scope="module")
def saved(backend, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved-model")
    backend.save_pretrained(folder, step=7)
    return folder


@pytest.fixture(scope="module")
def train_features(backend, tiny_corpus, feature_cache):
    """Features of the tiny corpus's pretraining utterances, the same list pretrain() extracts (so the
    shared cache serves both test modules); extracted once and then read from the cache."""
    from tts_adapt.data.readers import read_dataset

    utts, report = read_dataset(tiny_corpus, "auto", speaker_sets=["pretrain"])
    assert report.ok, report.summary()
    defaults = PretrainConfig(val_utterances=4)
    utts = [u for u in utts if (u.duration or 0) <= defaults.max_seconds]
    train, _ = split_utterances(utts, defaults.val_utterances, defaults.seed)
    feats = extract_features(train, feature_cache, AUDIO, backend.text_to_ids, backend.text_config, progress=False)
    assert len(feats) == len(train) > 0
    return feats


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# --------------------------------------------------------------------------- save / load
def test_save_then_from_pretrained_gives_the_same_model(backend, saved):
    loaded = TTSBackend.from_pretrained(saved)
    assert type(loaded) is type(backend)
    assert not loaded.model.training
    a, b = backend.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.speakers.kind == backend.speakers.kind and loaded.speakers.names == backend.speakers.names
    if backend.speakers.embeddings is not None:
        assert torch.equal(loaded.speakers.embeddings, backend.speakers.embeddings)
    assert loaded.audio == backend.audio and loaded.info == backend.info
    assert torch.equal(loaded.stats.mel_mean, backend.stats.mel_mean) and loaded.stats.f0_std == backend.stats.f0_std
    assert torch.load(saved / CHECKPOINT_FILE, weights_only=True)["step"] == 7
    for speaker in SPEAKERS:
        assert torch.equal(loaded.synthesize_mel(TEXT, speaker=speaker), backend.synthesize_mel(TEXT, speaker=speaker))
    # the concrete class loads its own folders too
    assert torch.equal(type(backend).from_pretrained(saved).synthesize_mel(TEXT, speaker="bob"),
                       backend.synthesize_mel(TEXT, speaker="bob"))


def test_synthesize_mel_is_finite_log_mel_and_deterministic(backend):
    mel = backend.synthesize_mel(TEXT, speaker=SPEAKERS[0])
    # at least one frame per token (Glow-TTS trims to a multiple of its squeeze factor, 2)
    assert mel.dim() == 2 and mel.shape[0] == AUDIO.n_mels and mel.shape[1] >= len(backend.text_to_ids(TEXT)) - 1
    assert torch.isfinite(mel).all()
    assert torch.equal(mel, backend.synthesize_mel(TEXT, speaker=SPEAKERS[0]))
    assert not torch.equal(mel, backend.synthesize_mel(TEXT, speaker=SPEAKERS[1]))  # the speaker matters
    slow = backend.synthesize_mel(TEXT, speaker=SPEAKERS[0], length_scale=2.0)
    assert slow.shape[1] >= mel.shape[1]
    assert backend.model.length_scale == 1.0 and not backend.model.training  # settings restored


def test_f0_contour_of_a_pitch_model_follows_its_frames_and_voicing(backend):
    mel, f0 = backend.synthesize_mel_f0(TEXT, speaker=SPEAKERS[0])
    assert torch.equal(mel, backend.synthesize_mel(TEXT, speaker=SPEAKERS[0]))
    if not isinstance(backend, FastPitchBackend):
        assert f0 is None  # Glow-TTS predicts no pitch
        return
    assert f0.shape == (mel.shape[1],)
    voiced = f0[f0 > 0]
    assert len(voiced) and (voiced >= F0_MIN).all() and (voiced <= F0_MAX).all()
    assert (f0 == 0).any()  # the spaces and the full stop are unvoiced


def test_frame_f0_spreads_token_pitch_over_durations_and_silences_unvoiced_symbols():
    backend = make_backend(MODEL_CASES["fastpitch-tiny-d_vector"])
    chars = ["a", "s", "a", " "]  # voiced, unvoiced, voiced, pause
    assert "s" in UNVOICED_SYMBOLS and " " in UNVOICED_SYMBOLS
    ids = torch.tensor([backend.tokenizer.characters.char_to_id(c) for c in chars])
    pitch = torch.tensor([1.0, 0.0, -1.0, 0.0])  # normalised: mean +- one std (150 +- 30 Hz)
    f0 = backend.frame_f0(ids, pitch, torch.tensor([10, 4, 10, 3]))
    assert f0.shape == (27,)
    assert torch.allclose(f0[:8], torch.tensor(180.0)) and torch.allclose(f0[16:22], torch.tensor(120.0))
    assert (f0[10:14] == 0).all() and (f0[24:] == 0).all()


def test_world_vocoder_needs_a_model_that_predicts_pitch(backend):
    synth = Synthesizer(backend, vocoder="world")
    if not isinstance(backend, FastPitchBackend):
        with pytest.raises(ValueError, match="predicts none"):
            synth.speak(TEXT, speaker=SPEAKERS[0])
        return
    wav = synth.speak(TEXT, speaker=SPEAKERS[0])
    mel = synth.mel(TEXT, speaker=SPEAKERS[0])
    assert wav.ndim == 1 and np.isfinite(wav).all() and 0 < np.abs(wav).max() <= 0.9 + 1e-5
    assert abs(len(wav) - mel.shape[1] * AUDIO.hop_length) <= AUDIO.hop_length


def test_zero_shot_by_d_vector(backend):
    vec = random_unit_vectors(1, seed=123)[0]
    if backend.speakers.kind != "d_vector":
        with pytest.raises(ValueError, match="d-vector"):
            backend.synthesize_mel(TEXT, d_vector=vec)
        return
    mel = backend.synthesize_mel(TEXT, d_vector=vec)
    assert mel.shape[0] == AUDIO.n_mels and torch.isfinite(mel).all()
    # a known speaker's own d-vector given zero-shot is that speaker
    known = backend.speakers.embeddings[1]
    assert torch.equal(backend.synthesize_mel(TEXT, d_vector=known), backend.synthesize_mel(TEXT, speaker="bob"))


def test_speaker_or_d_vector_exactly_one(backend):
    with pytest.raises(ValueError, match="exactly one"):
        backend.synthesize_mel(TEXT)
    with pytest.raises(ValueError, match="exactly one"):
        backend.synthesize_mel(TEXT, speaker="alice", d_vector=random_unit_vectors(1)[0])


def test_unknown_speaker_is_named(backend):
    with pytest.raises(UnknownSpeakerError, match="'nobody'") as err:
        backend.synthesize_mel(TEXT, speaker="nobody")
    assert "alice" in str(err.value)  # and the known ones are listed


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_an_error(backend, text):
    with pytest.raises(ValueError, match="empty"):
        backend.synthesize_mel(text, speaker="alice")


NOTHING_SPEAKABLE = {"chinese": "\u4f60\u597d\u4e16\u754c", "emoji": "\U0001f600\U0001f389",
                     "punctuation": "!!! ... ?"}


@pytest.mark.parametrize("text", NOTHING_SPEAKABLE.values(), ids=NOTHING_SPEAKABLE.keys())
def test_text_with_nothing_speakable_is_an_error_naming_it(backend, text):
    """espeak-ng would read such text out as "Chinese letter" or "grinning face"."""
    message = re.escape(f"text {text!r} has nothing to speak: no Latin letters or digits")
    with pytest.raises(ValueError, match=message):
        backend.synthesize_mel(text, speaker="alice")
    with pytest.raises(ValueError, match=message):
        Synthesizer(backend).speak(text, speaker="alice")


@pytest.mark.parametrize("value", [0.0, -1.0, 0.1, 5.0, float("nan"), float("inf")])
def test_length_scale_outside_its_range_is_an_error(backend, value):
    with pytest.raises(ValueError, match=r"length_scale must be a number from 0.25 to 4 \(>1 slower\), got "):
        Synthesizer(backend).speak(TEXT, speaker="alice", length_scale=value)


@pytest.mark.parametrize("flags,message", [
    (["--text", NOTHING_SPEAKABLE["chinese"]],
     (f"text {NOTHING_SPEAKABLE['chinese']!r} has nothing to speak: no Latin letters or digits, only other scripts, "
      "emoji or punctuation")),
    (["--text", NOTHING_SPEAKABLE["emoji"]], f"text {NOTHING_SPEAKABLE['emoji']!r} has nothing to speak"),
    (["--text", TEXT, "--length-scale", "0"], "--length-scale must be a number from 0.25 to 4 (>1 slower), got 0.0"),
    (["--text", TEXT, "--length-scale", "nan"], "--length-scale must be a number from 0.25 to 4 (>1 slower), got nan"),
])
def test_synthesize_refuses_unspeakable_text_and_length_scale_with_one_line(tmp_path, capsys, flags, message):
    from tts_adapt.cli import main

    out = tmp_path / "out.wav"
    assert main(["synthesize", *flags, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tts-adapt synthesize: error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("missing", [CONFIG_FILE, CHECKPOINT_FILE, META_FILE, SPEAKERS_FILE])
def test_model_folder_missing_a_file_names_it(saved, tmp_path, missing):
    folder = _copy(saved, tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(ModelFolderError, match=missing.replace(".", r"\.")):
        TTSBackend.from_pretrained(folder)


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="not found"):
        TTSBackend.from_pretrained(tmp_path / "nowhere")


def test_checkpoint_of_another_size_does_not_match(case, saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    other = make_backend({**case, "size": "small"})
    torch.save({"model": other.model.state_dict(), "step": 0}, folder / CHECKPOINT_FILE)
    with pytest.raises(ModelFolderError, match="does not match"):
        TTSBackend.from_pretrained(folder)


# --------------------------------------------------------------------------- LoRA targets
def test_lora_targets(backend):
    targets = backend.lora_targets()
    assert targets and len(set(targets)) == len(targets)
    modules = dict(backend.model.named_modules())
    attention = [n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)]
    assert set(attention) <= set(targets)
    for name in targets:
        assert isinstance(modules[name], (nn.Linear, nn.Conv1d, nn.MultiheadAttention)), name
        assert not name.startswith("aligner"), name
        assert not any(name.startswith(a + ".") for a in attention), name  # nothing inside an attention block
    kinds = {type(modules[n]) for n in targets}
    assert nn.Conv1d in kinds
    prefixes = {n.split(".")[0] for n in targets}
    assert EXPECTED_TARGET_PREFIXES[backend.name] <= prefixes


# --------------------------------------------------------------------------- training loss
def test_loss_on_real_features_is_finite_and_differentiable(case, train_features):
    names = sorted({f.speaker for f in train_features})
    model = make_backend(case, names=names, stats=FeatureStats.compute(train_features), seed=1)
    model.model.train()
    by_speaker = {}
    for f in train_features:  # one utterance of each speaker
        by_speaker.setdefault(f.speaker, f)
    items = list(by_speaker.values())[:4]
    batch = model.collate(items)
    loss, parts = model.loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert EXPECTED_LOSS_PARTS[model.name] <= set(parts)
    assert all(np.isfinite(v) for v in parts.values()), parts
    assert parts["loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    modules = dict(model.model.named_modules())
    for name in model.lora_targets():
        grads = [p.grad for p in modules[name].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_batch_frame_mask_matches_mel_lengths(backend, train_features):
    items = train_features[:5]
    batch = backend.collate(items)
    assert isinstance(batch, Batch) and len(batch) == 5
    B, F, n_mels = batch.mel.shape
    assert n_mels == AUDIO.n_mels and F == max(f.mel.shape[0] for f in items)
    assert batch.tokens.shape == (5, max(len(f.tokens) for f in items)) and batch.f0.shape == (5, 1, F)
    assert batch.mel_lengths.tolist() == [f.mel.shape[0] for f in items]
    mask = batch.frame_mask
    assert mask.shape == (B, F) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == batch.mel_lengths.tolist()
    for i, n in enumerate(batch.mel_lengths.tolist()):
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert (batch.mel[i, n:] == 0).all() and (batch.f0[i, 0, n:] == 0).all()
        assert torch.equal(batch.tokens[i, : len(items[i].tokens)], items[i].tokens)
        assert (batch.tokens[i, len(items[i].tokens):] == backend.pad_id).all()


# --------------------------------------------------------------------------- pitch targets
def _pulse_voice(f0: np.ndarray, sample_rate: int) -> np.ndarray:
    """A buzz of glottal-like pulses following ``f0`` (Hz per sample) through one formant-ish resonance,
    with 0.2 s of silence on either side."""
    from scipy.signal import lfilter

    phase = np.cumsum(f0 / sample_rate)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    r, theta = 0.97, 2 * np.pi * 500 / sample_rate
    voice = lfilter([1.0], [1.0, -2 * r * np.cos(theta), r * r], pulses)
    pad = np.zeros(int(0.2 * sample_rate))
    return (0.5 * np.concatenate([pad, voice / np.abs(voice).max(), pad])).astype(np.float32)


@pytest.mark.parametrize("target", [55.0, 110.0, 220.0])
def test_rapt_tracks_low_and_high_voices(target):
    """A known answer at the corpus's lowest voices (about 53 Hz), where SWIPE' jumped octaves."""
    sr = AUDIO.sample_rate
    wav = _pulse_voice(np.full(sr, target), sr)
    frames = AUDIO.frames(len(wav))
    f0 = extract_f0(wav, AUDIO, frames)
    assert AUDIO.f0_method == "rapt" and f0.shape == (frames,) and f0.dtype == np.float32
    voiced = f0[f0 > 0]
    assert len(voiced) > 0.5 * sr / AUDIO.hop_length
    assert abs(np.median(voiced) - target) < 0.03 * target
    assert (f0[:8] == 0).all() and (f0[-8:] == 0).all()  # the silences


def test_rapt_frames_line_up_with_the_mel_frames():
    """A jump from 100 to 200 Hz one second in lands at mel frame sr / hop (within a frame)."""
    sr = AUDIO.sample_rate
    wav = _pulse_voice(np.where(np.arange(2 * sr) < sr, 100.0, 200.0), sr)
    f0 = extract_f0(wav, AUDIO, AUDIO.frames(len(wav)))
    jump = (0.2 * sr + sr) / AUDIO.hop_length
    assert abs(f0[int(jump) - 6:int(jump) - 2].mean() - 100) < 5 and abs(f0[int(jump) + 3:int(jump) + 7].mean() - 200) < 10
    # the quieter copy of the same voice has the same contour: the level does not decide voicing
    assert np.abs(extract_f0(0.01 * wav, AUDIO, len(f0)) - f0).max() < 1.0


def test_models_saved_before_the_f0_setting_keep_swipe_and_their_feature_cache():
    assert AudioConfig.from_dict({"n_mels": 80}).f0_method == "swipe"  # tts_adapt.json of older models
    assert AudioConfig.from_dict(AudioConfig().to_dict()) == AudioConfig()
    with pytest.raises(ValueError, match="f0_method must be one of rapt, swipe"):
        AudioConfig(f0_method="yin")
    utts = [Utterance("a.wav", "Hello there.", "spk")]
    # the fingerprint the feature cache had before the setting existed (80 bands, SWIPE')
    assert fingerprint(utts, AudioConfig(f0_method="swipe"), {"phonemizer": "espeak"}) == "45ed2e2b526d7a23"
    assert fingerprint(utts, AudioConfig(), {"phonemizer": "espeak"}) != "45ed2e2b526d7a23"


# --------------------------------------------------------------------------- vocoder
def _sine(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(AUDIO.sample_rate * seconds)) / AUDIO.sample_rate
    return amplitude * torch.sin(2 * np.pi * freq * t)


def test_griffin_lim_lengths_and_batches():
    torch.manual_seed(0)
    vocoder = GriffinLimVocoder(AUDIO, n_iter=8)
    mel = LogMel(AUDIO)(_sine(330.0, 0.5) + 0.01 * torch.randn(AUDIO.sample_rate // 2))  # (n_mels, frames)
    frames = mel.shape[1]
    wav = vocoder(mel)
    assert wav.dim() == 1 and abs(wav.shape[0] - frames * AUDIO.hop_length) <= AUDIO.hop_length
    assert torch.isfinite(wav).all() and wav.abs().max() <= 0.9 + 1e-5
    batched = vocoder(torch.stack([mel, mel - 1.0, mel]))
    assert batched.shape == (3, wav.shape[0]) and torch.isfinite(batched).all()


def test_griffin_lim_is_deterministic_and_leaves_the_random_state_alone():
    mel = LogMel(AUDIO)(_sine(220.0))
    vocoder = GriffinLimVocoder(AUDIO)
    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    first = vocoder(mel)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random state is untouched
    torch.manual_seed(2)
    assert torch.equal(vocoder(mel), first)  # whatever the global seed


def test_griffin_lim_of_a_220_hz_sine_is_220_hz():
    """A known answer: log-mel of a 220 Hz tone, vocoded, has its spectral peak at 220 Hz (±10 Hz)."""
    torch.manual_seed(0)
    wav = GriffinLimVocoder(AUDIO)(LogMel(AUDIO)(_sine(220.0))).numpy()
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    peak = np.fft.rfftfreq(len(wav), 1 / AUDIO.sample_rate)[spectrum.argmax()]
    assert abs(peak - 220.0) <= 10.0, peak


# --------------------------------------------------------------------------- a shipped model
def _noise_mel(seconds: float = 1.0) -> torch.Tensor:
    """Log-mel of white noise: a flat envelope with no periodicity of its own."""
    g = torch.Generator().manual_seed(0)
    return LogMel(AUDIO)(0.1 * torch.randn(int(AUDIO.sample_rate * seconds), generator=g))


@pytest.mark.parametrize("target", [95.0, 210.0])
def test_world_vocoder_speaks_at_the_f0_it_is_given(target):
    """A known answer: a flat envelope given an F0 contour is voiced at that F0 (pYIN within 5 %); the low
    one is the case Griffin-Lim whispers."""
    mel = _noise_mel()
    wav = WorldVocoder(AUDIO)(mel, torch.full((mel.shape[1],), target)).numpy()
    assert abs(len(wav) - mel.shape[1] * AUDIO.hop_length) <= AUDIO.hop_length
    f0, voiced = f0_track(wav, AUDIO.sample_rate)
    assert voiced[3:-3].mean() > 0.9
    assert abs(np.nanmedian(f0[voiced]) - target) < 0.05 * target


def test_world_vocoder_without_f0_is_unvoiced_noise():
    mel = _noise_mel()
    wav = WorldVocoder(AUDIO)(mel, np.zeros(mel.shape[1] - 5)).numpy()  # short contours are padded with 0
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0
    assert f0_track(wav, AUDIO.sample_rate)[1].mean() < 0.2


@pytest.mark.slow
def test_shipped_base_model_speaks(tmp_path, tiny_corpus):
    """The shipped model, through the command line: a pretraining voice and a zero-shot voice."""
    from tts_adapt.cli import main
    from tts_adapt.models.synthesis import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "model.pth").is_file():
        pytest.skip(f"no shipped model in {DEFAULT_MODEL}")
    speaker = TTSBackend.from_pretrained(DEFAULT_MODEL).speakers.names[0]
    out = tmp_path / "trained.wav"
    assert main(["synthesize", "--text", "Hello, this is the shipped base model. It speaks two sentences.",
                 "--speaker", speaker, "--out", str(out)]) == 0
    wav, sr = sf.read(out)
    assert len(wav) > sr and np.isfinite(wav).all() and np.abs(wav).max() > 0.1
    reference = sorted((tiny_corpus / "wav").rglob("*.wav"))[:2]
    out = tmp_path / "zero_shot.wav"
    assert main(["synthesize", "--text", "A voice it never heard.", "--speaker-wav", *map(str, reference),
                 "--out", str(out)]) == 0
    assert sf.info(out).duration > 0.5
