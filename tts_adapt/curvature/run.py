"""Fitting a curvature file for a model folder on a dataset: the ``fit-curvature`` stage.

Reads the pretraining utterances (the embedded corpus's pretraining speakers and
training split; all utterances of other layouts), takes a seeded sample of N,
streams their cached features from disk and fits K-FAC, EK-FAC or the diagonal
Fisher on ``--device`` (under torchrun on GPUs each process takes the GPU of its
``LOCAL_RANK``), with ``--loader-workers`` processes collating the next batches.
Progress is saved every few batches next to the output (``<out>.state``), so an
interrupted fit continues where it stopped, also on another device; under
torchrun each process keeps its own state and rank 0 writes the file.
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial
from pathlib import Path

from tts_adapt.cache import cache_dir as default_cache_dir
from tts_adapt.curvature.curvature_config import LORA_METHODS
from tts_adapt.curvature.fit import FitState, fit_curvature
from tts_adapt.curvature.lora_params import LoraPointMaker, fit_lora_curvature
from tts_adapt.curvature.storage import Curvature
from tts_adapt.distributed import init_distributed, process_device

log = logging.getLogger(__name__)
SAVE_EVERY_BATCHES = 10


def condition_unknown_speakers(backend, utts: list, progress: bool = True, per_speaker: int = 10) -> list:
    """Make every speaker of ``utts`` speakable by ``backend`` (in memory): a d-vector model gets
    d-vectors of speakers it has not seen (e.g. curvature data from another corpus), from its own
    speaker encoder (``backend.embed_speaker``: resemblyzer for the toolkit's models, the model's
    encoder for YourTTS); an ID-table model cannot condition on them, so their utterances are left
    out with a warning."""
    from collections import defaultdict

    import torch
    from tqdm.auto import tqdm

    from tts_adapt.models.speakers import SpeakerTable

    table = backend.speakers
    unknown = sorted(s for s in {u.speaker for u in utts} if not table.knows(s))
    if not unknown:
        return utts
    if table.kind == "id_table":
        kept = [u for u in utts if u.speaker not in unknown]
        log.warning("%d utterance(s) of %d speaker(s) the model has no ID for are left out (%s)",
                    len(utts) - len(kept), len(unknown), ", ".join(unknown[:5]))
        return kept
    clips = defaultdict(list)
    for u in utts:
        if u.speaker in unknown and len(clips[u.speaker]) < per_speaker:
            clips[u.speaker].append(u.audio_path)
    vectors = [backend.embed_speaker(clips[n]).float() for n in tqdm(unknown, desc="speaker embeddings", unit="spk",
                                                                    disable=not progress)]
    emb = torch.cat([table.embeddings, torch.stack(vectors)])
    backend.speakers = SpeakerTable("d_vector", table.names + unknown, emb, table.sets)
    return utts


def fit_curvature_file(model: str | Path | None, data: str | Path, out: str | Path, *, method: str = "kfac",
                       fisher: str = "empirical", targets: list[str] | None = None,
                       num_utterances: int | None = 1000, batch_size: int = 8, seed: int = 0,
                       layout: str = "auto", cache_dir: str | Path | None = None, workers: int = 1,
                       progress: bool = True, device: str | None = "auto",
                       loader_workers: int = 0, lora_point: LoraPointMaker | None = None) -> tuple[Curvature, dict]:
    """Fit and save; returns (curvature, timing summary). ``workers`` processes read the data and extract
    features, ``loader_workers`` collate batches ahead of the fit (0: in this process); ``device`` is a
    ``--device`` value (see :func:`tts_adapt.device.resolve_device`). The lalora-* methods need ``lora_point``,
    the LoRA setup and point to fit at (:mod:`tts_adapt.curvature.lora_params`)."""
    if (method in LORA_METHODS) != (lora_point is not None):
        raise ValueError(f"the {method} curvature needs a LoRA point (the lalora-* methods, and only they)"
                         if lora_point is None else f"a LoRA point applies to the lalora-* methods, not {method!r}")
    from tts_adapt.data.readers import read_dataset
    from tts_adapt.models.base import TTSBackend
    from tts_adapt.models.synthesis import default_model_dir

    out = Path(out)
    device = process_device(device)
    rank, world = init_distributed(device)
    backend = TTSBackend.from_pretrained(model or default_model_dir()).to(device)
    kwargs = {"speaker_sets": ["pretrain"], "splits": ["train"]} if (Path(data) / "manifest.csv").is_file() \
        and layout in ("auto", "tts_adapt") else {}
    utts, report = read_dataset(data, layout, workers=workers if rank == 0 else 1, progress=progress and rank == 0,
                                **kwargs)
    if not utts:
        raise ValueError(f"{data}: no usable utterances to fit the curvature on\n{report.summary()}")
    if backend.speakers.kind == "id_table":  # leave out the speakers it has no ID for before taking N
        utts = condition_unknown_speakers(backend, utts, progress=progress and rank == 0)
    if num_utterances is not None and num_utterances < len(utts):
        utts = sorted(random.Random(seed).sample(utts, num_utterances), key=lambda u: u.audio_path)
    elif num_utterances is not None and num_utterances > len(utts):
        log.warning("%s has %d usable utterances; fitting on all of them (asked for %d)", data, len(utts),
                    num_utterances)
    utts = condition_unknown_speakers(backend, utts, progress=progress and rank == 0)
    cache = default_cache_dir(cache_dir)
    features = backend.extract_features(utts, cache, report=report, workers=workers if rank == 0 else 1,
                                        progress=progress and rank == 0, lazy=True)
    state_path = out.with_name(out.name + (f".state{rank}" if world > 1 else ".state"))
    state = FitState.load(state_path) if state_path.is_file() else FitState()
    if state.key and progress and rank == 0:
        print(f"resuming the fit from {state_path} (pass {state.phase + 1}, {state.batches_seen} batches done)")
    t0 = time.time()
    curvature = None
    while curvature is None:
        fit = partial(fit_lora_curvature, lora_point=lora_point) if lora_point is not None else fit_curvature
        curvature = fit(backend, features, method=method, fisher=fisher, targets=targets,
                        batch_size=batch_size, progress=progress and rank == 0, state=state, seed=seed,
                        max_batches=SAVE_EVERY_BATCHES * world, workers=loader_workers)
        if curvature is None:
            state.save(state_path)
    seconds = time.time() - t0
    curvature.info.update({"data": str(data), "fit_seconds": round(seconds, 1), "processes": world,
                           "skipped": len(report.skipped)})
    if rank == 0:
        curvature.save(out)
    state_path.unlink(missing_ok=True)
    summary = {"utterances": len(features), "layers": len(curvature.layers), "seconds": round(seconds, 1),
               "utterances_per_s": round(len(features) / max(seconds, 1e-9), 2),
               "size_mb": round(out.stat().st_size / 1e6, 2) if rank == 0 else None}
    return curvature, summary
