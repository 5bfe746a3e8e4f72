"""coqui-tts VITS zoo models: VCTK VITS (speaker-ID table) and YourTTS (d-vectors of its own speaker encoder).

What is adapted, and by which losses. VITS is an autoencoder of speech (posterior encoder from
linear spectrograms to a latent z, HiFi-GAN decoder from z to the waveform) with a text prior
(text encoder and normalising flow: z's distribution given the text) and a stochastic duration
predictor. The toolkit adapts the **prior**: text encoder, flow and duration predictor (the
duration predictor's posterior flows ``post_*`` only serve training, as FastPitch's aligner,
and are left out). The posterior encoder and the decoder stay frozen, because

* the decoder's losses that keep a waveform sharp are adversarial: they need the discriminator,
  which the zoo checkpoints may not include and which would have to be trained along with it on
  a few clips — a mel-only loss on the decoder makes it buzzy;
* with the autoencoder fixed, the latent of the target's real audio is a fixed, good target:
  adapting the prior so that the text maps to it (KL of the flow-transformed posterior against
  the text prior, as in VITS) and the durations match (the duration predictor's loss) is what
  makes the model speak the target's prosody and pronunciation.

Losses: ``loss = kl_loss_alpha · KL + dur_loss_alpha · L_dur`` (coqui's ``VitsGeneratorLoss``
weights and KL), and for a speaker-ID table also ``mel_loss_alpha · L1(mel)``, the mel
reconstruction of a random segment through the frozen decoder: with an ID table the target voice
is a new row of the speaker embedding, which conditions posterior encoder, flow and decoder, and
this term is what teaches that row the target's timbre. With d-vectors nothing trainable reaches
that term (the target's d-vector from the speaker encoder is fixed), so it is skipped. The
discriminator is not built (``init_discriminator`` off), and YourTTS's speaker-consistency loss is
not used.

LoRA targets: the Conv1d layers of the three adapted parts, dilated and grouped ones left out
(the duration predictor's depthwise ``convs_sep``; peft would ignore their dilation and groups).
The flow's WaveNet layers are weight-normalised (a ``weight`` parametrisation): peft's LoRA wraps
them as they are, and the curvature reads the effective weight.

Features: the waveform at the model's rate (the toolkit's audio loader, which resamples, as a user
resamples before coqui's training), from which each batch's linear spectrogram is computed with
coqui's ``wav_to_spec`` (as ``Vits.format_batch_on_device`` does), and the mel of
``spec_to_mel`` (natural log), kept as the utterance's mel.

Cost: an adaptation step of a VCTK-VITS-sized model costs about one plain forward and backward of
the whole model (0.7 to 1.1 times; ``benchmarks/bench_zoo_step.py``). Most of it is the frozen
parts: the HiFi-GAN decoder on the mel segment is nearly 60 % of the forward. They stay in the
autograd graph on purpose: with an ID table the new speaker's row conditions the posterior encoder
and the decoder (and the posterior's z feeds flow and decoder), so the row's gradient from the KL
and mel terms goes through them; running them without gradients would change what is learned
(``tests/test_zoo.py`` checks the row's gradient against finite differences). Their weights get no
gradients, which is why the backward pass costs less than a plain one. With d-vectors nothing
upstream of them is trained and autograd records nothing there. The spectrograms (linear of the
batch, mel of the decoded segment) are well under 1 % of a step, the K-FAC penalty about 1 %.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch

from tts_adapt.data.audio import load_audio
from tts_adapt.models.base import Batch, ModelFolderError, register_backend
from tts_adapt.models.coqui import CoquiBackend, loss_parts
from tts_adapt.models.features import FeatureExtractor
from tts_adapt.models.speakers import SpeakerTable
from tts_adapt.models.zoo import ZooBackend

#: The mel-loss segment and the posterior's sample are random; evaluation (eval mode: validation,
#: curvature fitting) and synthesis draw them from this seed, so that they are reproducible.
EVAL_SEED = 0


class VitsFeatures(FeatureExtractor):
    """coqui VITS features of one file: natural-log mel ``(frames, n_mels)`` from coqui's ``wav_to_spec``
    (``center=False``) and ``spec_to_mel``, no F0, and the waveform ``(samples,)`` as extra ``wav``."""

    def __init__(self, sample_rate: int, fft_size: int, hop_length: int, win_length: int, num_mels: int,
                 mel_fmin: float, mel_fmax: float | None):
        self.settings = dict(sample_rate=sample_rate, fft_size=fft_size, hop_length=hop_length,
                             win_length=win_length, num_mels=num_mels, mel_fmin=mel_fmin, mel_fmax=mel_fmax)

    @classmethod
    def of(cls, coqui_audio) -> "VitsFeatures":
        a = coqui_audio
        return cls(int(a.sample_rate), int(a.fft_size), int(a.hop_length), int(a.win_length), int(a.num_mels),
                   float(a.mel_fmin or 0.0), None if a.mel_fmax is None else float(a.mel_fmax))

    def describe(self) -> dict:
        return {"coqui_vits": self.settings}

    def mel_of(self, wav: torch.Tensor) -> torch.Tensor:
        """Natural-log mel ``(B, n_mels, frames)`` of waveforms ``(B, samples)``."""
        from TTS.utils.audio.torch_transforms import spec_to_mel

        s = self.settings
        return spec_to_mel(self.spec_of(wav), s["fft_size"], s["num_mels"], s["sample_rate"], s["mel_fmin"],
                           s["mel_fmax"])

    def spec_of(self, wav: torch.Tensor) -> torch.Tensor:
        """Linear magnitude spectrogram ``(B, fft_size // 2 + 1, frames)`` of waveforms ``(B, samples)``."""
        from TTS.utils.audio.torch_transforms import wav_to_spec

        s = self.settings
        return wav_to_spec(wav[:, None], s["fft_size"], s["hop_length"], s["win_length"], center=False)

    def __call__(self, audio_path: str):
        wav, _ = load_audio(audio_path, self.settings["sample_rate"])
        wav_t = torch.from_numpy(wav).float().clamp(-1.0, 1.0)
        if wav_t.numel() < self.settings["fft_size"]:
            raise ValueError(f"{audio_path}: shorter than one analysis window")
        mel = self.mel_of(wav_t[None])[0].T.contiguous()  # (frames, n_mels)
        return mel, torch.zeros(mel.shape[0]), {"wav": wav_t}


@register_backend
class VitsBackend(ZooBackend, CoquiBackend):
    """A pretrained coqui VITS with a speaker-ID table (``tts_models/en/vctk/vits``); see the module doc
    for what is adapted and why."""

    name = "vits"
    architectures = ("vits",)
    excluded_prefixes = ("posterior_encoder", "waveform_decoder", "disc", "duration_predictor.post_pre",
                         "duration_predictor.post_proj", "duration_predictor.post_convs",
                         "duration_predictor.post_flows")
    produces_waveform = True

    @classmethod
    def model_class(cls):
        from TTS.tts.models.vits import Vits

        return Vits

    @classmethod
    def accepts(cls, config) -> bool:
        from TTS.config import get_from_config_or_model_args as get

        return super().accepts(config) and not get(config, "use_d_vector_file")

    @classmethod
    def prepare_config(cls, config):
        if config.model_args.encoder_sample_rate:
            raise ModelFolderError("VITS models whose encoder runs at another sample rate than the decoder "
                                   "(encoder_sample_rate) are not supported")
        config.model_args.init_discriminator = False  # never used: the decoder is not adapted
        return config

    @property
    def features(self) -> VitsFeatures:
        return VitsFeatures.of(self.config.audio)

    def feature_extractor(self) -> VitsFeatures:
        return self.features

    @property
    def text_config(self) -> dict:
        return {**super().text_config, "coqui_model": self.name,
                "characters": self.config.characters.to_dict() if self.config.characters else None}

    # ------------------------------------------------------------------ conditioning
    def language_aux(self, batch_size: int) -> dict:
        """coqui ``language_ids`` for a multilingual model (none for VCTK VITS)."""
        return {"language_ids": None}

    def coqui_aux(self, speakers: Sequence[str]) -> dict:
        return {**self.speakers.conditioning(speakers, self.device), **self.language_aux(len(speakers))}

    # ------------------------------------------------------------------ loss
    @contextlib.contextmanager
    def _randomness(self):
        """Training draws from the global generator; evaluation from a fixed seed."""
        if self.model.training:
            yield
            return
        with torch.random.fork_rng():
            torch.manual_seed(EVAL_SEED)
            yield

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """KL + duration (+ mel reconstruction with an ID table) of a batch; see the module doc."""
        from TTS.tts.layers.losses import VitsGeneratorLoss
        from TTS.tts.utils.helpers import rand_segments, segment

        m, c = self.model, self.config
        if "wav" not in batch.extras:
            raise ValueError("VITS needs the waveform of every utterance: extract features with the backend's "
                             "extractor (backend.extract_features)")
        frames = batch.mel.shape[1]
        frame_mask = batch.frame_mask[:, None].float()  # (B, 1, F)
        spec = self.features.spec_of(batch.extras["wav"])[:, :, :frames] * frame_mask
        aux = self.coqui_aux(batch.speakers)
        with self._randomness():
            g = m._get_speaker_conditioning(aux, "emb_g", normalize_embedding=False)
            lang_emb = m.emb_l(aux["language_ids"]).unsqueeze(-1) if aux["language_ids"] is not None else None
            x, m_p, logs_p, x_mask = m.text_encoder(batch.tokens, batch.token_lengths, lang_emb=lang_emb)
            z, _, logs_q, y_mask = m.posterior_encoder(spec, batch.mel_lengths, g=g)
            z_p = m.flow(z, y_mask, g=g)
            outputs, attn = m.forward_mas({}, z_p, m_p, logs_p, x, x_mask, y_mask, g=g, lang_emb=lang_emb)
            m_p = torch.einsum("klmn, kjm -> kjn", [attn, m_p])
            logs_p = torch.einsum("klmn, kjm -> kjn", [attn, logs_p])
            losses = {"loss_kl": VitsGeneratorLoss.kl_loss(z_p, logs_q, m_p, logs_p, y_mask) * c.kl_loss_alpha,
                      "loss_duration": outputs["loss_duration"].float().sum() * c.dur_loss_alpha}
            if self.speakers.kind == "id_table":
                z_slice, slice_ids = rand_segments(z, batch.mel_lengths, m.spec_segment_size, let_short_samples=True,
                                                   pad_short=True)
                wav_hat = m.waveform_decoder(z_slice, g=g)  # (B, 1, segment samples)
                mel = batch.mel.transpose(1, 2) * frame_mask  # (B, n_mels, F)
                mel_slice = segment(mel, slice_ids, m.spec_segment_size, pad_short=True)
                mel_hat = self.features.mel_of(wav_hat[:, 0].float())
                losses["loss_mel"] = torch.nn.functional.l1_loss(mel_hat, mel_slice) * c.mel_loss_alpha
        losses["loss"] = sum(losses.values())
        return losses["loss"], loss_parts(losses)

    # ------------------------------------------------------------------ synthesis
    def _inference(self, ids: torch.Tensor, aux: dict, length_scale: float) -> tuple[torch.Tensor, None]:
        """Natural-log mel ``(frames, n_mels)`` of the synthesised waveform (VITS predicts no separate pitch)."""
        wav = self._waveform(ids, aux, length_scale)
        return self.features.mel_of(wav[None].float())[0].T, None

    def _waveform(self, ids: torch.Tensor, aux: dict, length_scale: float) -> torch.Tensor:
        old_scale = self.model.length_scale
        self.model.length_scale = length_scale
        try:
            with torch.random.fork_rng():
                torch.manual_seed(EVAL_SEED)
                out = self.model.inference(ids, aux_input={**aux, **self.language_aux(1),
                                                           "x_lengths": torch.tensor([ids.shape[1]], device=ids.device)})
        finally:
            self.model.length_scale = old_scale
        return out["model_outputs"][0, 0].clone()

    def to_log_mel(self, mel: torch.Tensor) -> torch.Tensor:
        return mel  # already natural-log magnitudes

    @torch.no_grad()
    def synthesize_wav(self, text: str, speaker: str | None = None, d_vector: torch.Tensor | None = None,
                       length_scale: float = 1.0) -> torch.Tensor:
        """Waveform ``(samples,)`` at the model's rate from VITS's own decoder (no separate vocoder)."""
        aux = self.speaker_aux(speaker, d_vector)
        ids = self.text_ids_tensor(text)
        was_training = self.model.training
        self.model.eval()
        try:
            return self._waveform(ids, aux, length_scale).float().cpu()
        finally:
            self.model.train(was_training)


@register_backend
class YourTTSBackend(VitsBackend):
    """YourTTS (``tts_models/multilingual/multi-dataset/your_tts``): VITS conditioned on d-vectors of its
    own speaker encoder (coqui's ``SpeakerManager`` with ``model_se.pth`` + ``config_se.json``), and on a
    language (English by default). Known speakers are the mean d-vectors of their clips in the
    model's d-vector file; a new voice's d-vector comes from the same encoder."""

    name = "yourtts"
    #: the language adapted and synthesised, when the model has it
    default_language = "en"

    @classmethod
    def accepts(cls, config) -> bool:
        from TTS.config import get_from_config_or_model_args as get

        return config.get("model") in cls.architectures and bool(get(config, "use_d_vector_file"))

    @classmethod
    def zoo_speakers(cls, model, folder: Path | None) -> SpeakerTable:
        manager = model.speaker_manager
        names = sorted(manager.speaker_names) if manager is not None else []
        if not names:
            raise ModelFolderError(f"{folder}: the model's d-vector file names no speakers")
        emb = torch.stack([torch.as_tensor(manager.get_mean_embedding(n), dtype=torch.float32).reshape(-1)
                           for n in names])
        return SpeakerTable("d_vector", names, emb)

    def after_load(self) -> None:
        languages = dict(self.model.language_manager.name_to_id) if self.model.language_manager else {}
        if languages:
            self.language = self.default_language if self.default_language in languages else sorted(languages)[0]
            self.info.setdefault("language", self.language)
        else:
            self.language = None

    def language_aux(self, batch_size: int) -> dict:
        if self.language is None or not self.model.args.use_language_embedding:
            return {"language_ids": None}
        lid = self.model.language_manager.name_to_id[self.language]
        return {"language_ids": torch.full((batch_size,), lid, dtype=torch.long, device=self.device)}

    def embed_speaker(self, audio_paths: Sequence[str | Path]) -> torch.Tensor:
        """Mean d-vector ``(dim,)`` of the recordings from YourTTS's own speaker encoder."""
        manager = self.model.speaker_manager
        if manager is None or manager.encoder is None:
            raise ModelFolderError(f"{self.info.get('zoo_folder')}: no speaker encoder (model_se.pth and "
                                   "config_se.json) to compute the d-vector of a new voice")
        if not audio_paths:
            raise ValueError("no reference audio given")
        return torch.as_tensor(manager.compute_embedding_from_clip([str(p) for p in audio_paths]),
                               dtype=torch.float32)
