"""FastPitch (coqui-tts ``ForwardTTS`` with its alignment network) as a toolkit backend."""

from __future__ import annotations

import torch

from tts_adapt.data.audio import AudioConfig
from tts_adapt.models.base import Batch, register_backend
from tts_adapt.models.coqui import TEXT_FIELDS, CoquiBackend, coqui_audio, speaker_fields
from tts_adapt.models.features import F0_MAX, F0_MIN
from tts_adapt.models.speakers import SpeakerTable

#: Model sizes. "small" (about 2.5 M parameters) trains at about one step per second on
#: two CPU cores (batch 16 x 3 s).
SIZES = {
    "tiny": dict(hidden=32, ffn=64, heads=2, layers=1),
    "small": dict(hidden=128, ffn=256, heads=2, layers=4),
    "base": dict(hidden=192, ffn=512, heads=2, layers=6),
}
#: espeak-ng IPA symbols spoken without voicing (with pauses and punctuation): the frames of these tokens
#: get no F0 in :meth:`FastPitchBackend.frame_f0`. Stress and length marks follow their vowel.
UNVOICED_SYMBOLS = frozenset("ptkfθsʃhxçʔ") | frozenset(" ,.;:!?-\"'()…—")
#: Frames of the moving average that joins the predictor's per-token pitch into a contour (16 ms each).
F0_SMOOTHING_FRAMES = 5
#: The binary alignment loss is switched on gradually over this many steps (coqui ramps it by epochs).
BINARY_LOSS_WARMUP_STEPS = 2000
#: Regression outputs sampled for the Monte Carlo Fisher: (output, axis, config weight).
MC_TERMS = (("model_outputs", "frames", "spec_loss_alpha"), ("durations_log", "tokens", "dur_loss_alpha"),
            ("pitch_avg", "tokens", "pitch_loss_alpha"), ("energy_avg", "tokens", "energy_loss_alpha"))


def _batch_time_channels(t: torch.Tensor, time: int) -> torch.Tensor:
    """A model output (B, T), (B, T, C) or (B, C, T) as (B, T, C)."""
    if t.dim() == 2:
        return t.unsqueeze(-1)
    return t if t.shape[1] == time else t.transpose(1, 2)


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

    def mc_fisher_loss(self):
        """Σ_term α_term · masked mean (prediction − (prediction + ε))², ε ~ N(0, 1) over the model's
        regression outputs (:data:`MC_TERMS`): the Monte Carlo Fisher's loss of one batch (mean over the
        batch, like the training loss)."""
        criterion = self.model.get_criterion()

        def loss(batch: Batch, generator: torch.Generator) -> torch.Tensor:
            outputs, _ = self.model.train_step(self.coqui_batch(batch), criterion)
            masks = {"frames": batch.frame_mask, "tokens": batch.token_mask}
            total = torch.zeros((), device=batch.device)
            for name, axis, alpha_name in MC_TERMS:
                pred, alpha = outputs.get(name), float(getattr(self.config, alpha_name, 0.0) or 0.0)
                if pred is None or alpha == 0.0:
                    continue
                mask = masks[axis]
                pred = _batch_time_channels(pred, mask.shape[1])
                m = mask[..., None].to(pred.dtype)
                # drawn on the generator's device (the CPU), so every device draws the same samples
                noise = torch.randn(pred.shape, generator=generator, dtype=torch.float32, device=generator.device)
                target = pred.detach() + noise.to(pred.device, pred.dtype)
                total = total + alpha * (((pred - target) * m) ** 2).sum() / (m.sum() * pred.shape[-1])
            return total

        return loss

    def _inference(self, ids: torch.Tensor, aux: dict, length_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        old_scale = self.model.length_scale
        self.model.length_scale = length_scale
        try:
            out = self.model.inference(ids, aux_input=aux)
            mask = torch.ones_like(ids[:, None], dtype=torch.float)
            durations = self.model.format_durations(out["durations_log"], mask)
        finally:
            self.model.length_scale = old_scale
        mel = out["model_outputs"][0]
        f0 = self.frame_f0(ids[0], out["pitch"][0, 0], durations.reshape(-1).long())
        return mel, _fit_length(f0, mel.shape[0])

    def frame_f0(self, ids: torch.Tensor, pitch: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """F0 contour ``(frames,)`` in Hz from the pitch predictor: each token's predicted mean pitch
        (un-normalised with the model's F0 statistics) over its frames, 0 on unvoiced symbols, joined by a
        short moving average within voiced stretches."""
        chars = [self.tokenizer.characters.id_to_char(int(i)) for i in ids]
        voiced = torch.tensor([c not in UNVOICED_SYMBOLS for c in chars], device=pitch.device)
        hz = (pitch.float() * self.stats.f0_std + self.stats.f0_mean).clamp(F0_MIN, F0_MAX)
        f0 = torch.repeat_interleave(torch.where(voiced, hz, torch.zeros_like(hz)), durations)
        v = (f0 > 0).float()[None, None]
        kernel = torch.ones(1, 1, F0_SMOOTHING_FRAMES, device=f0.device)
        pad = F0_SMOOTHING_FRAMES // 2
        total = torch.nn.functional.conv1d(f0[None, None], kernel, padding=pad)[0, 0]
        count = torch.nn.functional.conv1d(v, kernel, padding=pad)[0, 0]
        return torch.where(f0 > 0, total / count.clamp_min(1.0), torch.zeros_like(f0))


def _fit_length(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` cut or zero-padded to ``n`` values."""
    return x[:n] if len(x) >= n else torch.cat([x, x.new_zeros(n - len(x))])
