"""Cost of one adaptation step of a zoo-sized VITS against a plain forward+backward of the same batch.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_zoo_step.py [--device auto]
        [--batch-size 8] [--seconds 3] [--repeats 3] [--rank 8]

Model: a VITS of coqui's VCTK VITS (``tts_models/en/vctk/vits``) architecture and size, built from that
model's config (VitsArgs as in its ``config.json``: 192 hidden channels, 6 text-encoder layers, 16
posterior-encoder layers, 4 flow layers, the HiFi-GAN decoder [8, 8, 2, 2] from 512 channels, a
109-speaker table of 256 channels; espeak phonemes with blanks; 22,050 Hz, FFT 1024, hop 256, 80 mels)
through the backend's ``create`` (the discriminator not built, as for a loaded zoo model), with random
weights perturbed as ``tests/zoo_models.py`` does (0.02 · N(0, 1) on every parameter: a trained model
is no identity flow). No weights are downloaded. The target speaker is added as ``adapt`` adds it
(a new row of the speaker table, trained as peft's trainable tokens).

Batch: ``--batch-size`` clips of about ``--seconds`` s (0.9 to 1.1 times, so that the batch is padded
as real ones are) of synthetic voiced sound (a gliding harmonic tone under a syllable-rate envelope,
plus noise; the model's weights are random, so what the audio says does not matter for time), each
with an English sentence of about 15 characters per second, written to WAV and read back through the
backend's own feature extractor (waveform and mel), all spoken by the target speaker. The same clips
every step; ``backend.collate`` and the batch's move to the device are inside every timed step.

Timed, on ``--device`` (``auto``: CUDA if present, else the CPU), with ``synchronize`` around each step:

(a) plain: ``backend.loss(batch)`` in train mode and ``backward`` w.r.t. every parameter of the base
    model (no LoRA, no optimizer);
(b) one adaptation step exactly as :func:`tts_adapt.adapt.train.adapt` runs it: the strategy wraps its
    own copy of the model (peft LoRA of rank ``--rank``, alpha 16, on ``backend.lora_targets()``, the
    target's row as trainable tokens), and one step of the shared loop
    (:class:`~tts_adapt.models.trainer.Trainer` ``.fit(stop_after=1)``: collate, loss, the strategy's
    penalty term, finiteness check, backward, gradient clipping, AdamW step, and the end-of-call
    bookkeeping; no checkpoint file, no validation; the loop moves the batch to the device), for
    ``lora`` (no penalty) and ``kfac`` (λ = its default, 30,000; a curvature with random SPD factors of
    every target layer's shapes, which the strategy moves to the device when the loop starts).

One untimed warm-up step of each; then ``--repeats`` rounds, each running (a) and every (b) once, the
order rotated from round to round so that all share the machine's load alike. Every timed step
re-seeds the global generator with the round, so (a) and (b) draw the same random segment, posterior
sample and dropout. Printed: the core count, load average and threads; the parameters (base model,
trained by the adapter) and the number of LoRA targets; seconds per step (mean over rounds) and the
ratio (b)/(a), as the ratio of the means and the range of per-round ratios (goal: <= 3).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

STRATEGIES = ("lora", "kfac")
GOAL = 3.0
#: VCTK VITS's speaker IDs are coqui's dataset names of VCTK's 109 speakers; how they are spelled does not
#: change the model's size
VCTK_SPEAKERS = [f"VCTK_p{225 + i}" for i in range(109)]
SENTENCES = (
    "Please call Stella and ask her to bring these things with her from the store. Six spoons of fresh snow "
    "peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob. We also need a small plastic "
    "snake and a big toy frog for the kids. She can scoop these things into three red bags, and we will go "
    "meet her Wednesday at the train station."
)


def vctk_vits_config():
    """coqui's config of VCTK VITS (the model's ``config.json`` values that decide its size and features)."""
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import VitsArgs

    args = VitsArgs(
        spec_segment_size=32, hidden_channels=192, hidden_channels_ffn_text_encoder=768, num_heads_text_encoder=2,
        num_layers_text_encoder=6, kernel_size_text_encoder=3, dropout_p_text_encoder=0.1,
        dropout_p_duration_predictor=0.5, kernel_size_posterior_encoder=5, dilation_rate_posterior_encoder=1,
        num_layers_posterior_encoder=16, kernel_size_flow=5, dilation_rate_flow=1, num_layers_flow=4,
        resblock_type_decoder="1", resblock_kernel_sizes_decoder=[3, 7, 11],
        resblock_dilation_sizes_decoder=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], upsample_rates_decoder=[8, 8, 2, 2],
        upsample_initial_channel_decoder=512, upsample_kernel_sizes_decoder=[16, 16, 4, 4], use_sdp=True,
        use_speaker_embedding=True, speaker_embedding_channels=256,
        detach_dp_input=True)
    audio = BaseAudioConfig(sample_rate=22050, fft_size=1024, win_length=1024, hop_length=256, num_mels=80,
                            mel_fmin=0.0, mel_fmax=None)
    config = VitsConfig(model_args=args, audio=audio, use_phonemes=True, phonemizer="espeak", phoneme_language="en",
                        text_cleaner="english_cleaners", add_blank=True, use_speaker_embedding=True,
                        kl_loss_alpha=1.0, dur_loss_alpha=1.0, mel_loss_alpha=45.0)
    config.speakers = list(VCTK_SPEAKERS)
    return config


def build_backend(seed: int = 0):
    """A VCTK-VITS-sized VitsBackend with random weights, the target speaker added as ``adapt`` adds it;
    also the rows the adapter trains."""
    from tts_adapt.adapt.adapter import add_target_speaker
    from tts_adapt.models import get_backend

    torch.manual_seed(seed)
    backend = get_backend("vits").create(config=vctk_vits_config())
    with torch.no_grad():
        for p in backend.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return backend, add_target_speaker(backend, None)


def synthetic_clip(seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced-sounding clip: harmonics of a gliding F0 under a syllable-rate envelope, plus noise."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(100, 200) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30) if k * f0.max() < sample_rate / 2)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t)) ** 2
    wav = 0.1 * envelope * voiced + 0.003 * rng.standard_normal(n)
    return (wav / max(1.0, np.abs(wav).max() / 0.9)).astype(np.float32)


def make_features(backend, n: int, seconds: float, folder: Path, seed: int = 0) -> list:
    """``n`` clips of synthetic audio and English text through the backend's feature extractor, spoken by the
    target speaker."""
    import soundfile as sf

    from tts_adapt.adapt.adapter import TARGET_NAME
    from tts_adapt.models.features import UtteranceFeatures

    rng = np.random.default_rng(seed)
    words = SENTENCES.split()
    extractor = backend.feature_extractor()
    sr = backend.audio.sample_rate
    feats = []
    for i in range(n):
        length = seconds * rng.uniform(0.9, 1.1)
        start = int(rng.integers(len(words)))
        text = []
        while len(" ".join(text)) < 15 * length:
            text.append(words[(start + len(text)) % len(words)])
        text = " ".join(text)
        path = folder / f"clip{i}.wav"
        sf.write(path, synthetic_clip(length, sr, rng), sr)
        mel, f0, extras = extractor(str(path))
        feats.append(UtteranceFeatures(f"clip{i}", TARGET_NAME, mel, f0,
                                       torch.tensor(backend.text_to_ids(text)), text, extras))
    return feats


def random_kfac(backend, targets: list[str], seed: int = 0):
    """A kfac curvature of the target layers' shapes with random SPD factors (what the penalty computes does
    not depend on the values, only its result)."""
    from tts_adapt.curvature.hooks import linear_maps
    from tts_adapt.curvature.storage import Curvature, CurvatureLayer

    g = torch.Generator().manual_seed(seed)

    def spd(n: int) -> torch.Tensor:
        m = torch.randn(n, n, generator=g) / math.sqrt(n)
        return m @ m.T + 1e-3 * torch.eye(n)

    maps = linear_maps(backend.model, targets)
    tensors = {}
    for m in maps:
        tensors[f"{m.name}.A"], tensors[f"{m.name}.G"] = spd(m.in_features), spd(m.out_features)
    return Curvature("kfac", "empirical", [CurvatureLayer.of(m, 1000) for m in maps], tensors, num_utterances=1000,
                     fingerprint=backend.fingerprint(targets), targets=list(targets), backend=backend.name)


class PlainStep:
    """(a): the backend's training loss and its gradient w.r.t. every parameter of the base model."""

    def __init__(self, backend, feats, device):
        self.backend, self.feats, self.device = backend.to(device), feats, device
        for p in backend.model.parameters():
            p.requires_grad_(True)
        backend.model.train()

    def __call__(self) -> None:
        batch = self.backend.collate(self.feats).to(self.device)
        loss, _ = self.backend.loss(batch)
        self.backend.model.zero_grad(set_to_none=True)
        loss.backward()


class AdaptStep:
    """(b): one step of ``adapt``'s loop under a strategy, on its own LoRA-wrapped copy of the model."""

    def __init__(self, backend, rows, feats, device, strategy: str, rank: int, curvature):
        from tts_adapt.adapt.adapt_config import AdaptConfig
        from tts_adapt.adapt.strategies import get_strategy
        from tts_adapt.models.trainer import LoopConfig, Trainer

        config = AdaptConfig(strategy=strategy, rank=rank)
        self.strategy = get_strategy(strategy).from_config(config, curvature)
        self.strategy.wrap(backend.model, backend.lora_targets(), rows)
        backend.to(device)  # after wrapping, as adapt does: the LoRA weights move with their layers
        params = self.strategy.trainable_parameters()
        optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
        self.trainer = Trainer(
            backend.model, params, optimizer, backend.loss, epoch_batches=lambda epoch: [list(range(len(feats)))],
            make_batch=lambda idx: backend.collate([feats[i] for i in idx]),
            config=LoopConfig(steps=10 ** 9, checkpoint_every=10 ** 9), callbacks=[self.strategy], progress=False,
            device=device)

    def __call__(self) -> None:
        stopped = self.trainer.fit(stop_after=1)
        if stopped != "interrupted":
            raise RuntimeError(f"the adaptation step did not complete ({stopped})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per step")
    ap.add_argument("--seconds", type=float, default=3.0, help="about how long each clip is")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every variant once)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    args = ap.parse_args()

    from tts_adapt.device import resolve_device, synchronize

    device = resolve_device(args.device)
    backend, rows = build_backend()
    targets = backend.lora_targets()
    with tempfile.TemporaryDirectory() as tmp:
        feats = make_features(backend, args.batch_size, args.seconds, Path(tmp))
    curvature = random_kfac(backend, targets)  # the strategy moves it to the device, as in adapt

    def copy_of(b):
        c = copy.copy(b)
        c.model = copy.deepcopy(b.model)
        return c

    steps = {"plain": PlainStep(copy_of(backend), feats, device)}
    for name in STRATEGIES:
        steps[name] = AdaptStep(copy_of(backend), rows, feats, device, name, args.rank,
                                curvature if name == "kfac" else None)
    audio = backend.audio
    del backend

    names = list(steps)
    load_before = os.getloadavg()
    for name in names:  # warm-up
        steps[name]()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            torch.manual_seed(r)
            synchronize(device)
            t0 = time.perf_counter()
            steps[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()

    plain_backend = steps["plain"].backend
    trained = sum(p.numel() for p in steps["kfac"].trainer.params.values())
    frames = sum(f.mel.shape[0] for f in feats)
    print(f"device: {device}, CPU cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, load average "
          f"(1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"model: VCTK VITS size, {plain_backend.num_parameters() / 1e6:.2f} M parameters; {len(targets)} LoRA "
          f"targets, rank {args.rank}: {trained / 1e6:.3f} M trained parameters (with the target's speaker row)")
    print(f"batch: {len(feats)} clips, {frames * audio.hop_length / audio.sample_rate:.1f} s of "
          f"audio, {max(len(f.tokens) for f in feats)} tokens at most; {args.repeats} rounds after a warm-up")
    base = statistics.mean(seconds["plain"])
    print(f"{'step':<16} {'s/step':>8} {'vs (a)':>8} {'per round':>14} {'goal':>6}")
    for name in names:
        mean = statistics.mean(seconds[name])
        per_round = [s / p for s, p in zip(seconds[name], seconds["plain"])]
        label = "(a) plain" if name == "plain" else f"(b) {name}"
        goal = "" if name == "plain" else f"<= {GOAL:g}"
        print(f"{label:<16} {mean:>8.2f} {mean / base:>8.2f} {min(per_round):>6.2f}-{max(per_round):<7.2f} "
              f"{goal:>6}")


if __name__ == "__main__":
    main()
