"""Tiny, randomly initialised coqui-tts models of each zoo architecture, written as a downloaded zoo model
is: ``config.json`` with paths from the training machine, the checkpoint as coqui's ``save_checkpoint``
writes it, the speaker files (for YourTTS a speaker encoder built from coqui's encoder class). Shared by the
zoo tests and the recipe tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: A path from the machine the model was trained on, as zoo configs carry them.
TRAINING_MACHINE = "/home/coqui/experiments/run-0"

ZOO_CASES = {
    "vctk-fast_pitch": dict(backend="coqui_fastpitch", checkpoint="model_file.pth", sample_rate=22050),
    "vctk-vits": dict(backend="vits", checkpoint="model_file.pth", sample_rate=22050),
    "your_tts": dict(backend="yourtts", checkpoint="model_file.pth", sample_rate=16000),
}


def _audio(config_cls, sample_rate: int, **more):
    return config_cls(sample_rate=sample_rate, fft_size=1024, win_length=1024, hop_length=256, num_mels=80,
                      mel_fmin=0.0, mel_fmax=8000.0, **more)


def fast_pitch_config(speakers_file: str, sample_rate: int):
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.fast_pitch_config import FastPitchConfig
    from TTS.tts.models.forward_tts import ForwardTTSArgs

    fft = {"hidden_channels_ffn": 64, "num_heads": 2, "num_layers": 1, "dropout_p": 0.1}
    args = ForwardTTSArgs(out_channels=80, hidden_channels=32, use_aligner=True, use_pitch=True,
                          pitch_predictor_hidden_channels=32, duration_predictor_hidden_channels=32,
                          encoder_type="fftransformer", encoder_params=fft, decoder_type="fftransformer",
                          decoder_params=dict(fft), use_speaker_embedding=True, speakers_file=speakers_file)
    audio = _audio(BaseAudioConfig, sample_rate, pitch_fmin=65.0, pitch_fmax=640.0)
    return FastPitchConfig(model_args=args, audio=audio, use_phonemes=True,
                           phonemizer="espeak", phoneme_language="en-us", text_cleaner="english_cleaners",
                           use_speaker_embedding=True, speakers_file=speakers_file)


def vits_config(sample_rate: int, **speaker_args):
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import VitsArgs

    args = VitsArgs(hidden_channels=16, hidden_channels_ffn_text_encoder=32, num_heads_text_encoder=2,
                    num_layers_text_encoder=1, num_layers_posterior_encoder=2, num_layers_flow=1,
                    upsample_initial_channel_decoder=16, upsample_rates_decoder=[8, 8, 4],
                    upsample_kernel_sizes_decoder=[16, 16, 8], resblock_kernel_sizes_decoder=[3],
                    resblock_dilation_sizes_decoder=[[1, 3, 5]], spec_segment_size=8,
                    init_discriminator=False, **speaker_args)
    top = {k: v for k, v in speaker_args.items() if k in VitsConfig.__dataclass_fields__}  # mirrored fields
    multilingual = speaker_args.get("use_language_embedding", False)
    return VitsConfig(model_args=args, audio=_audio(BaseAudioConfig, sample_rate), use_phonemes=not multilingual,
                      phonemizer="espeak", phoneme_language="en-us",
                      text_cleaner="multilingual_cleaners" if multilingual else "english_cleaners", **top)


def speaker_encoder(folder: Path, dim: int) -> None:
    """A coqui ResNet speaker encoder as YourTTS ships it (waveform input, its own spectrogram), saved as
    ``model_se.pth`` + ``config_se.json``."""
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.encoder.configs.speaker_encoder_config import SpeakerEncoderConfig
    from TTS.encoder.utils.generic_utils import setup_encoder_model

    audio = BaseAudioConfig(sample_rate=16000, fft_size=512, win_length=400, hop_length=160, num_mels=64,
                            preemphasis=0.97, do_trim_silence=False)
    config = SpeakerEncoderConfig(audio=audio, model_params={"model_name": "resnet", "input_dim": 64,
                                                             "proj_dim": dim, "use_torch_spec": True,
                                                             "log_input": True},
                                  num_classes_in_batch=2, num_utter_per_class=2, num_loader_workers=0)
    torch.save({"model": setup_encoder_model(config).state_dict(), "step": 0}, folder / "model_se.pth")
    config.save_json(str(folder / "config_se.json"))


def moved(config, base: str):
    """A copy of ``config`` whose file paths (speaker, language and encoder files) point into ``base``."""
    from tts_adapt.models.zoo import PATH_FIELDS, _field_owners

    config = config.copy()
    for field_name in PATH_FIELDS:
        for owner in _field_owners(config, field_name):
            attr = field_name.split(".")[-1]
            value = getattr(owner, attr, None)
            if value:
                name = Path(value[0] if isinstance(value, list) else value).name
                setattr(owner, attr, [f"{base}/{name}"] if isinstance(value, list) else f"{base}/{name}")
    return config


def write_zoo_folder(case: dict, folder: Path, speakers: list[str], seed: int = 0) -> Path:
    """A tiny model of the case's architecture in the layout of a downloaded zoo model."""
    from TTS.tts.models.forward_tts import ForwardTTS
    from TTS.tts.models.vits import Vits

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    sr = case["sample_rate"]
    if case["backend"] in ("coqui_fastpitch", "vits"):
        (folder / "speaker_ids.json").write_text(json.dumps({s: i for i, s in enumerate(speakers)}))
    if case["backend"] == "coqui_fastpitch":
        config = fast_pitch_config("speaker_ids.json", sr)
    elif case["backend"] == "vits":
        config = vits_config(sr, use_speaker_embedding=True, speakers_file="speaker_ids.json",
                             speaker_embedding_channels=8)
    else:
        dim = 32
        g = torch.Generator().manual_seed(seed)
        d_vectors = {f"{s}_{k:03d}.wav": {"name": s, "embedding": torch.randn(dim, generator=g).tolist()}
                     for s in speakers for k in range(2)}
        (folder / "speakers.json").write_text(json.dumps(d_vectors))
        (folder / "language_ids.json").write_text(json.dumps({"en": 0, "fr-fr": 1, "pt-br": 2}))
        speaker_encoder(folder, dim)
        config = vits_config(sr, use_d_vector_file=True, d_vector_file=["speakers.json"], d_vector_dim=dim,
                             use_language_embedding=True, embedded_language_dim=4,
                             language_ids_file="language_ids.json", speaker_encoder_model_path="model_se.pth",
                             speaker_encoder_config_path="config_se.json")
    model_class = ForwardTTS if case["backend"] == "coqui_fastpitch" else Vits
    model = model_class(moved(config, str(folder)))
    # a trained model is no identity flow: perturb the zero-initialised layers as training would
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    # as coqui's save_checkpoint writes it: {"model": state_dict, "config": ..., "step": ...} with torch.save;
    # config.json names the files where the model was trained, as zoo configs do
    config = moved(config, TRAINING_MACHINE)
    torch.save({"model": model.state_dict(), "config": config.to_dict(), "step": 1000, "epoch": 1},
               folder / case["checkpoint"])
    config.save_json(str(folder / "config.json"))
    return folder
