"""FastPitch (coqui-tts ``ForwardTTS`` with its alignment network) as a toolkit backend."""

from __future__ import annotations

import torch

from tts_adapt.data.audio import AudioConfig
from tts_adapt.models.base import register_backend
from tts_adapt.models.coqui import TEXT_FIELDS, CoquiBackend, coqui_audio, speaker_fields
from tts_adapt.models.speakers import SpeakerTable

#: Model sizes. "small" (about 2.5 M parameters) trains at about one step per second on
#: two CPU cores (batch 16 x 3 s).
SIZES = {
    "tiny": dict(hidden=32, ffn=64, heads=2, layers=1),
    "small": dict(hidden=128, ffn=256, heads=2, layers=4),
    "base": dict(hidden=192, ffn=512, heads=2, layers=6),
}
#: The binary alignment loss is switched on gradually over this many steps (coqui ramps it by epochs).
BINARY_LOSS_WARMUP_STEPS = 2000


@register_backend
class FastPitchBackend(CoquiBackend):
    """coqui-tts FastPitch: FFT encoder/decoder, learned alignment, pitch predictor."""

    name = "fastpitch"
    # the alignment network only serves training; adapting it changes nothing at synthesis
    excluded_prefixes = ("aligner",)

    @classmethod
    def model_class(cls):
        from TTS.tts.models.forward_tts import ForwardTTS

        return ForwardTTS

    @classmethod
    def make_config(cls, audio: AudioConfig, speakers: SpeakerTable, size: str):
        from TTS.tts.configs.fast_pitch_config import FastPitchConfig
        from TTS.tts.models.forward_tts import ForwardTTSArgs

        if size not in SIZES:
            raise ValueError(f"unknown FastPitch size {size!r}; valid: {', '.join(SIZES)}")
        s = SIZES[size]
        fft = {"hidden_channels_ffn": s["ffn"], "num_heads": s["heads"], "num_layers": s["layers"], "dropout_p": 0.1}
        spk = speaker_fields(speakers)
        args = ForwardTTSArgs(
            out_channels=audio.n_mels, hidden_channels=s["hidden"], use_aligner=True, use_pitch=True,
            pitch_predictor_hidden_channels=s["hidden"], duration_predictor_hidden_channels=s["hidden"],
            encoder_type="fftransformer", encoder_params=fft, decoder_type="fftransformer", decoder_params=dict(fft),
            use_d_vector_file=spk["use_d_vector_file"], d_vector_dim=spk["d_vector_dim"],
            use_speaker_embedding=spk["use_speaker_embedding"],
        )
        return FastPitchConfig(model_args=args, audio=coqui_audio(audio), **TEXT_FIELDS, **spk)

    def set_training_progress(self, step: int) -> None:
        self.model.binary_loss_weight = min(step / BINARY_LOSS_WARMUP_STEPS, 1.0)

    def _inference(self, ids: torch.Tensor, aux: dict, length_scale: float) -> torch.Tensor:
        old_scale = self.model.length_scale
        self.model.length_scale = length_scale
        try:
            return self.model.inference(ids, aux_input=aux)["model_outputs"][0]
        finally:
            self.model.length_scale = old_scale
