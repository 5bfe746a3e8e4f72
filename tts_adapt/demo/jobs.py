"""Voice cloning in the background: one worker thread runs the queued adaptation runs one at a time, so
concurrent users never train into the same folder and never share the CPU between two runs.

Each run trains in its own staging folder inside the bank and is published under its name by one
rename when it finishes; a cancelled or failed run leaves nothing in the bank.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tts_adapt.adapt.adapter import Adapter
from tts_adapt.adapt.adapt_config import AdaptConfig
from tts_adapt.adapt.strategies import get_strategy
from tts_adapt.adapt.train import adapt
from tts_adapt.curvature.storage import TENSORS, CurvatureFileError, read_header, serves
from tts_adapt.demo.bank import AdapterBank
from tts_adapt.io import write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloneRequest:
    name: str  # of the new adapter
    clips_dir: Path  # target folder (wav + txt), inside ``staging``
    staging: Path  # the run's own folder in the bank; removed when the run ends
    config: AdaptConfig
    curvature: Path | None
    min_clips: int
    owner: str = ""  # the session that asked (cancel finds its runs by it)
    replay_data: Path | None = None  # pretraining corpus a replaying strategy (ilora) replays


class CloneJob:
    """One queued run: its state (``queued``, ``running``, ``done``, ``failed``, ``cancelled``), progress,
    and the published adapter or the error."""

    def __init__(self, request: CloneRequest):
        self.request = request
        self.state = "queued"
        self.step, self.total = 0, request.config.steps
        self.message = "waiting in the queue"
        self.adapter: Adapter | None = None
        self.error: str | None = None
        self.run_record: dict | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (within ``timeout`` seconds)."""
        return self._done.wait(timeout)

    def _finish(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        self._done.set()


class CloneQueue:
    """A single-worker queue of :class:`CloneJob` runs against one base model and one bank."""

    def __init__(self, bank: AdapterBank, model_dir: Path, device: str | None = "auto"):
        self.bank, self.model_dir, self.device = bank, Path(model_dir), device
        self._queue: queue.Queue[CloneJob | None] = queue.Queue()
        self._jobs: list[CloneJob] = []
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="clone-worker", daemon=True)
        self._worker.start()

    def submit(self, request: CloneRequest) -> CloneJob:
        job = CloneJob(request)
        with self._lock:
            self._jobs.append(job)
        self._queue.put(job)
        return job

    def ahead_of(self, job: CloneJob) -> int:
        """Unfinished runs submitted before ``job``."""
        with self._lock:
            if job not in self._jobs:
                return 0
            return sum(1 for j in self._jobs[:self._jobs.index(job)] if not j.finished)

    def pending_names(self) -> set[str]:
        """Names of the adapters that queued or running runs will save."""
        with self._lock:
            return {j.request.name for j in self._jobs if not j.finished}

    def cancel(self, owner: str) -> list[CloneJob]:
        """Ask every unfinished run of ``owner`` to stop; returns them."""
        with self._lock:
            jobs = [j for j in self._jobs if j.request.owner == owner and not j.finished]
        for j in jobs:
            j.cancel()
        return jobs

    def close(self, timeout: float | None = None) -> None:
        """Cancel every run and stop the worker."""
        with self._lock:
            for j in self._jobs:
                j.cancel()
        self._queue.put(None)
        self._worker.join(timeout)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                state, message = self._run(job)
            except Exception as err:  # reported to the user; the worker serves the next run
                log.exception("clone run %s failed", job.request.name)
                state, message = "failed", f"cloning failed: {err}"
            shutil.rmtree(job.request.staging, ignore_errors=True)  # before the job reports its end
            job._finish(state, message)
            with self._lock:
                self._jobs = [j for j in self._jobs if not j.finished]

    def _run(self, job: CloneJob) -> tuple[str, str]:
        """Train, then publish unless cancelled; returns the final state and a sentence for the user."""
        req = job.request
        if job.cancel_requested:
            return "cancelled", "cancelled before it started; nothing was saved"
        job.state, job.message = "running", "preparing the clips (speaker embedding, features)"
        t0 = time.time()

        def on_step(step: int, total: int, row: dict) -> bool:
            job.step, job.total = step, total
            job.message = f"step {step}/{total}, loss {row['loss']:.3f}"
            return not job.cancel_requested

        out = req.staging / "adapter"
        run = adapt(req.clips_dir, out, self.model_dir, req.config, curvature=req.curvature,
                    cache_dir=req.staging / "features", progress=False, min_clips=req.min_clips, on_step=on_step,
                    device=self.device, replay_data=req.replay_data)
        if run["stopped"] == "cancelled" or job.cancel_requested:
            return "cancelled", f"cancelled at step {run['steps']}; nothing was saved"
        # the clips are deleted with the staging folder: run.json says where they came from instead
        run["target_dir"] = f"{run['train_clips'] + run['val_clips']} clips uploaded to the demo (not kept)"
        write_json_atomic(out / "run.json", run)
        job.run_record = run
        job.adapter = self.bank.publish(out, req.name)
        return "done", (f"adapter {req.name!r} saved: {run['steps']} steps ({run['stopped']}), best validation "
                        f"loss {run['best_val_loss']:.4f}, {time.time() - t0:.0f} s")


def curvature_for(strategy: str, paths: list[Path]) -> tuple[Path | None, str]:
    """The first curvature file among ``paths`` (files, or folders holding ``*.safetensors``) whose method
    the strategy can use, and a sentence for the user; ``(None, why)`` when there is none."""
    if not get_strategy(strategy).needs_curvature:
        return None, f"strategy {strategy} needs no curvature file."
    # a file of a richer method serves too (an EK-FAC file holds the K-FAC factors)
    own = get_strategy(strategy).curvature_methods
    wanted = tuple(m for m in TENSORS if any(serves(m, o) for o in own))
    candidates = []
    for p in paths:
        candidates += sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    for file in candidates:
        try:
            meta = read_header(file)
        except (CurvatureFileError, OSError):  # missing, not safetensors, or not a curvature file
            continue
        if meta.get("method") in wanted:
            return file, f"curvature: {file} ({meta['method']}, {meta.get('num_utterances', '?')} utterances)."
    where = ", ".join(str(p) for p in paths) or "(no curvature path given)"
    return None, (f"strategy {strategy} needs a {' or '.join(wanted)} curvature file and none was found in "
                  f"{where}: run 'tts-adapt quickstart', or 'tts-adapt fit-curvature --method {wanted[0]} "
                  f"--data CORPUS --out FILE' and start the demo with --curvature FILE.")
