"""Glow-TTS (coqui-tts ``GlowTTS``: transformer encoder, flow decoder, monotonic alignment search)."""

from __future__ import annotations

import torch

from tts_adapt.data.audio import AudioConfig
from tts_adapt.models.base import Batch, register_backend
from tts_adapt.models.coqui import TEXT_FIELDS, CoquiBackend, coqui_audio, loss_parts, speaker_fields
from tts_adapt.models.speakers import SpeakerTable

SIZES = {
    "tiny": dict(enc=32, dec=32, dp=32, ffn=64, enc_layers=1, flows=2, block_layers=2),
    "small": dict(enc=96, dec=96, dp=128, ffn=192, enc_layers=4, flows=8, block_layers=3),
    "base": dict(enc=192, dec=192, dp=256, ffn=768, enc_layers=6, flows=12, block_layers=4),
}


@register_backend
class GlowTTSBackend(CoquiBackend):
    """coqui-tts Glow-TTS; the flow's data-dependent initialisation runs on the first batches."""

    name = "glowtts"

    @classmethod
    def model_class(cls):
        from TTS.tts.models.base_tts import BaseTTS
        from TTS.tts.models.glow_tts import GlowTTS

        class GlowTTSWithSpeakerTable(GlowTTS):
            """coqui's GlowTTS checks d-vectors against a d_vector_file; ours live in the speaker table."""

            def _init_d_vector(self) -> None:
                BaseTTS._init_d_vector(self)

        return GlowTTSWithSpeakerTable

    @classmethod
    def make_config(cls, audio: AudioConfig, speakers: SpeakerTable, size: str):
        from TTS.tts.configs.glow_tts_config import GlowTTSConfig

        if size not in SIZES:
            raise ValueError(f"unknown Glow-TTS size {size!r}; valid: {', '.join(SIZES)}")
        s = SIZES[size]
        spk = speaker_fields(speakers)
        return GlowTTSConfig(
            out_channels=audio.n_mels, hidden_channels_enc=s["enc"], hidden_channels_dec=s["dec"],
            hidden_channels_dp=s["dp"], num_flow_blocks_dec=s["flows"], num_block_layers=s["block_layers"],
            encoder_params={"kernel_size": 3, "dropout_p": 0.1, "num_layers": s["enc_layers"], "num_heads": 2,
                            "hidden_channels_ffn": s["ffn"], "input_length": None},
            audio=coqui_audio(audio), **TEXT_FIELDS, **{**spk, "d_vector_dim": spk["d_vector_dim"] or 0},
        )

    def set_training_progress(self, step: int) -> None:
        self.model.run_data_dep_init = step < self.config.data_dep_init_steps

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        coqui_batch = self.coqui_batch(batch)
        if self.model.run_data_dep_init and self.model.training:
            # coqui's first steps only initialise the flow's activation norms and return no loss
            self.model.train_step(coqui_batch, self._criterion)
            self.model.run_data_dep_init = False
        _, losses = self.model.train_step(coqui_batch, self._criterion)
        return losses["loss"], loss_parts(losses)

    def position_masks(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Masks (B, T) of the time axes the layers run on: mel frames, the decoder's squeezed
        frames (pairs of frames), and text tokens (for curvature fitting)."""
        squeeze = self.config.num_squeeze
        frames = batch.mel.shape[1] // squeeze
        squeezed = torch.arange(frames, device=batch.device)[None, :] < (batch.mel_lengths // squeeze)[:, None]
        tokens = torch.arange(batch.tokens.shape[1], device=batch.device)[None, :] < batch.token_lengths[:, None]
        return batch.frame_mask, squeezed, tokens

    def _inference(self, ids: torch.Tensor, aux: dict, length_scale: float) -> tuple[torch.Tensor, None]:
        old_scale = self.model.length_scale
        self.model.length_scale = length_scale
        try:
            out = self.model.inference(ids, aux_input={**aux, "x_lengths": torch.tensor([ids.shape[1]], device=ids.device)})
        finally:
            self.model.length_scale = old_scale
        return out["model_outputs"][0], None  # Glow-TTS predicts no pitch
