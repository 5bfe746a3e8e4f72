"""From log-mel spectrogram to waveform: Griffin-Lim (torchaudio), WORLD (pyworld, voicing from the model's
predicted F0) or a coqui-tts HiFi-GAN checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio

from tts_adapt.data.audio import AudioConfig
from tts_adapt.models import zoo


def inverse_mel_scale(audio: AudioConfig) -> torchaudio.transforms.InverseMelScale:
    """Mel → linear magnitude by least squares, for the toolkit's slaney mel filters."""
    return torchaudio.transforms.InverseMelScale(
        n_stft=audio.n_fft // 2 + 1, n_mels=audio.n_mels, sample_rate=audio.sample_rate, f_min=audio.mel_fmin,
        f_max=audio.mel_fmax, norm="slaney", mel_scale="slaney",
    )


def peak_normalise(wav: torch.Tensor) -> torch.Tensor:
    """Peak at 0.9 along the last axis, never amplifying noise more than 10x."""
    peak = wav.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6)
    return wav * (0.9 / peak).clamp(max=10.0)


class GriffinLimVocoder:
    """Mel → linear magnitude (least squares, torchaudio ``InverseMelScale``) → Griffin-Lim.

    Works on ``(n_mels, frames)`` or batched ``(B, n_mels, frames)`` natural-log
    mel magnitudes, on whatever device the input is on. ``power`` > 1 sharpens
    the harmonics before phase reconstruction, the usual trick against
    Griffin-Lim's buzz.
    """

    needs_f0 = False

    def __init__(self, audio: AudioConfig, n_iter: int = 32, power: float = 1.5, seed: int = 0):
        self.audio = audio
        self.power = power
        self.seed = seed
        self.inverse_mel = inverse_mel_scale(audio)
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=audio.n_fft, n_iter=n_iter, win_length=audio.win_length, hop_length=audio.hop_length, power=1.0,
        )

    @torch.no_grad()
    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Waveform ``(samples,)`` or ``(B, samples)`` in [-1, 1]."""
        device = log_mel.device
        inv, gl = self.inverse_mel.to(device), self.griffin_lim.to(device)
        magnitude = inv(torch.exp(log_mel.float())).clamp_min(0.0)
        # Griffin-Lim starts from random phases: a fixed seed, without touching the caller's random state,
        # makes the same mel give the same waveform (reports are reproducible)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            wav = gl(magnitude ** self.power)
        return peak_normalise(wav)


class WorldVocoder:
    """Source-filter synthesis with WORLD (pyworld): the mel gives the spectral envelope (mel → linear
    power by the same least squares as :class:`GriffinLimVocoder`), an F0 contour gives the excitation.

    Griffin-Lim has to recover voicing from magnitudes alone; for low voices (below about 110 Hz) the
    harmonics are closer together than the mel bands, so a predicted mel carries no harmonic comb and
    the voice comes out whispered. Here the periodicity comes from the F0 contour instead: the model's
    own predicted pitch (FastPitch) in synthesis, the recording's F0 in copy synthesis. Voiced frames
    are periodic below :attr:`PERIODIC_BELOW` Hz and grow noisier up to :attr:`NOISY_ABOVE` Hz.
    """

    needs_f0 = True
    PERIODIC_BELOW = 3000.0
    NOISY_ABOVE = 7000.0

    def __init__(self, audio: AudioConfig):
        self.audio = audio
        self.inverse_mel = inverse_mel_scale(audio)
        freqs = np.arange(audio.n_fft // 2 + 1) * audio.sample_rate / audio.n_fft
        self._voiced_ap = np.clip((freqs - self.PERIODIC_BELOW) / (self.NOISY_ABOVE - self.PERIODIC_BELOW), 1e-3, 1.0)

    @torch.no_grad()
    def __call__(self, log_mel: torch.Tensor, f0: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Waveform ``(samples,)`` in [-1, 1] of a natural-log mel ``(n_mels, frames)`` and an F0 contour
        ``(frames,)`` in Hz (0 where unvoiced; cut or zero-padded to the mel's frames)."""
        import pyworld

        if log_mel.dim() != 2:
            raise ValueError(f"the WORLD vocoder takes one mel (n_mels, frames); got shape {tuple(log_mel.shape)}")
        frames = log_mel.shape[1]
        f0 = np.asarray(f0.cpu() if torch.is_tensor(f0) else f0, dtype=np.float64)[:frames]
        f0 = np.pad(f0, (0, frames - len(f0)))
        magnitude = self.inverse_mel(torch.exp(log_mel.detach().float().cpu())).clamp_min(1e-8)
        power = np.ascontiguousarray(magnitude.T.double().numpy() ** 2)  # (frames, bins)
        ap = np.ascontiguousarray(np.where(f0[:, None] > 0, self._voiced_ap[None], 1.0))
        frame_ms = 1000.0 * self.audio.hop_length / self.audio.sample_rate
        wav = torch.from_numpy(pyworld.synthesize(np.ascontiguousarray(f0), power, ap, self.audio.sample_rate,
                                                  frame_ms)).float()
        return peak_normalise(wav).to(log_mel.device)


def make_vocoder(spec: str | Path | None, audio: AudioConfig, griffin_lim_iters: int = 32):
    """The vocoder ``spec`` names: None or ``"griffin-lim"``, ``"world"``, else a coqui HiFi-GAN checkpoint."""
    if spec is None or str(spec) == "griffin-lim":
        return GriffinLimVocoder(audio, n_iter=griffin_lim_iters)
    if str(spec) == "world":
        return WorldVocoder(audio)
    return HifiganVocoder(spec, audio)


class HifiganVocoder:
    """A coqui-tts HiFi-GAN checkpoint folder (``config.json`` + ``model.pth``/``best_model.pth``), or a coqui
    vocoder name (``vocoder_models/en/vctk/hifigan_v2``) resolved as zoo models are.

    The vocoder must have been trained on the same mel features (rate, FFT, hop,
    mels); its config is checked against the toolkit's audio config.
    """

    needs_f0 = False

    def __init__(self, folder: str | Path, audio: AudioConfig):
        from TTS.config import load_config
        from TTS.vocoder.models import setup_model

        if zoo.is_zoo_name(folder, "vocoder_models"):  # e.g. vocoder_models/en/vctk/hifigan_v2, through coqui's manager
            folder = zoo.download(str(folder))
        folder = Path(folder)
        config_path = folder / "config.json"
        ckpts = [p for p in (folder / "model.pth", folder / "best_model.pth", folder / "model_file.pth") if p.is_file()]
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder}: missing config.json of the HiFi-GAN vocoder")
        if not ckpts:
            raise FileNotFoundError(f"{folder}: no model.pth or best_model.pth in the HiFi-GAN vocoder folder")
        config = load_config(str(config_path))
        a = config.audio
        mismatch = [f"{k}: vocoder {v} vs model {w}" for k, v, w in [
            ("sample_rate", a.sample_rate, audio.sample_rate), ("hop_length", a.hop_length, audio.hop_length),
            ("num_mels", a.num_mels, audio.n_mels)] if v != w]
        if mismatch:
            raise ValueError(f"{folder}: vocoder does not match the acoustic model ({'; '.join(mismatch)})")
        from TTS.utils.audio import AudioProcessor

        self.model = setup_model(config)
        # coqui's loader reads with weights_only=True under torch >= 2.4 (trainer.io.load_fsspec; torch is pinned
        # to 2.11), so a checkpoint from elsewhere cannot run code
        self.model.load_checkpoint(config, str(ckpts[0]), eval=True)
        self.ap = AudioProcessor(**config.audio)
        self.audio = audio

    @torch.no_grad()
    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Our natural-log mel magnitudes are re-expressed in the vocoder's own mel scale
        (coqui's dB conversion and normalisation from its audio config) before inference."""
        x = log_mel if log_mel.dim() == 3 else log_mel[None]
        coqui_mel = torch.stack([torch.from_numpy(self.ap.normalize(self.ap._amp_to_db(torch.exp(m).numpy())))
                                 for m in x.float().cpu()]).float()
        device = log_mel.device  # the vocoder runs where the acoustic model's mel is
        wav = self.model.to(device).inference(coqui_mel.to(device)).squeeze(1)
        return wav if log_mel.dim() == 3 else wav[0]
