"""Clone a voice: LoRA fine-tuning of the base model on a target speaker under a Laplace penalty.

Output folder::

    adapter_config.json, adapter_model.safetensors   peft's adapter files (PeftModel.from_pretrained)
    target_speaker.safetensors                      the target's conditioning: its d-vector, or for a
                                                    speaker-ID-table model the index of its new table row
                                                    (the row's values are in the adapter file)
    run.json                                        run card: settings, data, steps, wall time, curves, metrics
    checkpoint/                                     resumable state while training (removed at the end)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tts_adapt import __version__
from tts_adapt.adapt.adapter import TARGET_NAME, add_target_speaker, save_adapter, target_conditioning
from tts_adapt.adapt.config import AdaptConfig
from tts_adapt.adapt.lora import is_adapter_parameter, lora_factors, lora_parameters, wrap_with_lora
from tts_adapt.adapt.penalty import get_strategy
from tts_adapt.adapt.target import MAX_CLIPS, MIN_CLIPS, read_target_clips, split_heldout
from tts_adapt.io import atomic_path
from tts_adapt.models.base import TTSBackend

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
MAX_BAD_STEPS = 5


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    size = min(batch_size, n)
    return [order[i:i + size] for i in range(0, n - size + 1, size)]


def target_d_vector(clips, per_speaker: int = 20) -> torch.Tensor:
    from tts_adapt.data.speaker_encoder import SpeakerEncoder

    return torch.from_numpy(SpeakerEncoder().embed_speaker([u.audio_path for u in clips[:per_speaker]])).float()


def _validation_loss(backend, feats, batch_size) -> float:
    was = backend.model.training
    backend.model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            chunk = feats[i:i + batch_size]
            loss, _ = backend.loss(backend.collate(chunk))
            total += float(loss) * len(chunk)
    backend.model.train(was)
    return total / max(1, len(feats))


def adapt(target_dir: str | Path, out: str | Path, model: str | Path | None = None,
          config: AdaptConfig = AdaptConfig(), *, curvature: str | Path | None = None,
          targets: list[str] | None = None, resume: bool = False, val_dir: str | Path | None = None,
          cache_dir: str | Path | None = None, progress: bool = True, stop_after: int | None = None,
          min_clips: int = MIN_CLIPS, max_clips: int | None = MAX_CLIPS,
          on_step: Callable[[int, int, dict], bool] | None = None) -> dict:
    """Fine-tune LoRA on the target clips; returns the run card (also written to ``out/run.json``).

    ``stop_after`` ends this call after that many steps, leaving a resumable
    checkpoint (as an interruption would). ``min_clips`` is the fewest usable target
    clips accepted, ``max_clips`` the most used (the first ones; ``None``: all).
    ``on_step(step, total_steps, row)`` is called after every optimizer
    step with that step's curve row; returning ``False`` ends the run there with
    ``stopped="cancelled"`` (the adapter of the best validation so far is saved).
    """
    import os

    from tts_adapt.models.synthesis import default_model_dir

    if max_clips is not None and max_clips < min_clips:
        raise ValueError(f"max_clips ({max_clips}) is below min_clips ({min_clips})")
    out = Path(out)
    t0 = time.time()
    model_dir = Path(model) if model else default_model_dir()
    backend = TTSBackend.from_pretrained(model_dir)
    ckpt = out / "checkpoint"
    if resume and not (ckpt / STATE_FILE).is_file():
        raise FileNotFoundError(f"{ckpt / STATE_FILE}: nothing to resume")
    if not resume and (out / "adapter_config.json").is_file():
        raise FileExistsError(f"{out} already holds an adapter; choose another --out (or --resume an interrupted run)")
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True) if resume else None
    if state is not None and json.loads(state["config"]) != config.to_dict():
        raise ValueError(f"{ckpt}: the interrupted run used other settings ({state['config']}); "
                         "resume with the same ones")

    clips, report = read_target_clips(target_dir, backend.audio.sample_rate, min_clips=min_clips,
                                      max_clips=max_clips if max_clips is not None else 10 ** 9)
    if val_dir:
        val_clips, _ = read_target_clips(val_dir, backend.audio.sample_rate, min_clips=1)
        train_clips = clips
    else:
        train_clips, val_clips = split_heldout(clips, seed=config.seed)
    for note in report.notes:
        log.info("note: %s", note)

    strategy_cls = get_strategy(config.strategy)
    curv = None
    if strategy_cls.needs_curvature:
        if curvature is None:
            raise ValueError(f"strategy {config.strategy!r} needs --curvature FILE (fit it with tts-adapt fit-curvature)")
        from tts_adapt.curvature import Curvature

        curv = Curvature.load(curvature, backend)
    elif curvature is not None and config.strategy != "lora":
        log.warning("strategy %s does not use the curvature file %s", config.strategy, curvature)
    if config.strategy == "lora" and config.lam:
        log.warning("strategy lora has no penalty; lam=%s is ignored", config.lam)

    d_vec = target_conditioning(backend, train_clips)
    trainable_rows = add_target_speaker(backend, d_vec)
    cache = Path(cache_dir or os.environ.get("TTS_ADAPT_CACHE", Path.home() / ".cache" / "tts_adapt"))
    feats = backend.extract_features(train_clips, cache, report=report, progress=progress)
    val_feats = backend.extract_features(val_clips, cache, report=report, progress=progress)
    for f in feats + val_feats:
        f.speaker = TARGET_NAME

    targets = targets or (list(curv.targets) if curv is not None else backend.lora_targets())
    for p in backend.model.parameters():
        p.requires_grad_(False)
    peft_model = wrap_with_lora(backend.model, targets, config.rank, config.alpha, seed=config.seed,
                                trainable_tokens=trainable_rows)
    penalty = strategy_cls(curv, damping=config.damping)
    penalty.check_layers(lora_factors(peft_model))
    params = lora_parameters(peft_model)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)

    step, epoch, position = 0, 0, 0
    best_val, bad_validations, bad_steps = math.inf, 0, 0
    curve: list[dict] = []
    torch.manual_seed(config.seed)
    best = None
    if state is not None:
        named = dict(peft_model.named_parameters())
        with torch.no_grad():
            for k, v in state["lora"].items():
                named[k].copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
        best_val, bad_validations = float(state["best_val"]), int(state["bad_validations"])
        torch.set_rng_state(state["rng"])
        curve = json.loads(state["curve"])
        best = state["best"]
    backend.model.train()
    batches = _batches(len(feats), config.batch_size, config.seed, epoch)
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, desc=f"adapting ({config.strategy})", unit="step",
               disable=not progress)
    stopped = "steps"
    while step < end:
        if position >= len(batches):
            epoch, position = epoch + 1, 0
            batches = _batches(len(feats), config.batch_size, config.seed, epoch)
        batch = backend.collate([feats[i] for i in batches[position]])
        position += 1
        tts_loss, parts = backend.loss(batch)
        pen = penalty(lora_factors(peft_model)) if config.lam and config.strategy != "lora" else tts_loss.new_zeros(())
        loss = tts_loss + 0.5 * config.lam * pen
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            bad_steps += 1
            log.warning("step %d: non-finite loss (%s), step skipped (%d in a row)", step, float(loss), bad_steps)
            if bad_steps >= MAX_BAD_STEPS:
                stopped = "non-finite loss"
                break
            continue
        bad_steps = 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        step += 1
        bar.update(1)
        row = {"step": step, "loss": float(tts_loss.detach()), "penalty": float(pen.detach())}
        bar.set_postfix(tts=f"{row['loss']:.3f}", penalty=f"{row['penalty']:.3g}")
        if step % config.val_every == 0 or step == config.steps:
            row["val_loss"] = _validation_loss(backend, val_feats, config.batch_size)
            if row["val_loss"] < best_val - 1e-4:
                best_val, bad_validations = row["val_loss"], 0
                best = {k: v.detach().clone() for k, v in peft_model.named_parameters() if is_adapter_parameter(k)}
            else:
                bad_validations += 1
        curve.append(row)
        if on_step is not None and on_step(step, config.steps, row) is False:
            stopped = "cancelled"
            break
        if bad_validations >= config.patience:
            stopped = "early stopping"
            break
        if step % config.checkpoint_every == 0 and step < config.steps:
            _save_checkpoint(ckpt, peft_model, optimizer, step, epoch, position, best_val, bad_validations,
                             curve, best, config)
    bar.close()
    if stop_after is not None and step < config.steps and stopped == "steps":
        _save_checkpoint(ckpt, peft_model, optimizer, step, epoch, position, best_val, bad_validations, curve, best,
                         config)
        return {"status": "interrupted", "step": step}
    # keep the adapter with the best validation loss
    if best is not None:
        named = dict(peft_model.named_parameters())
        with torch.no_grad():
            for k, v in best.items():
                named[k].copy_(v)
    card = {
        "tts_adapt_version": __version__, "base_model": str(model_dir), "config": config.to_dict(),
        "curvature": str(curvature) if curvature else None, "targets": list(targets),
        "target_dir": str(target_dir), "train_clips": len(feats), "val_clips": len(val_feats),
        "train_seconds_of_audio": round(sum(f.mel.shape[0] for f in feats) * backend.audio.hop_length
                                        / backend.audio.sample_rate, 1),
        "steps": step, "stopped": stopped, "best_val_loss": best_val, "curve": curve,
        "wall_seconds": round(time.time() - t0, 1), "input_report": report.summary(),
        "trainable_parameters": sum(p.numel() for p in params),
    }
    save_adapter(out, peft_model, d_vec, card)
    shutil.rmtree(ckpt, ignore_errors=True)  # also temp files a killed run left behind
    return card


def _save_checkpoint(ckpt: Path, peft_model, optimizer, step, epoch, position, best_val, bad_validations, curve,
                     best, config) -> None:
    """Everything needed to resume, in one file written atomically (a kill -9 leaves the previous one)."""
    lora = {k: v.detach().clone() for k, v in peft_model.named_parameters() if is_adapter_parameter(k)}
    with atomic_path(ckpt / STATE_FILE) as t:
        torch.save({"lora": lora, "best": best, "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
                    "position": position, "best_val": best_val, "bad_validations": bad_validations,
                    "rng": torch.get_rng_state(), "curve": json.dumps(curve), "config": json.dumps(config.to_dict())},
                   t)
