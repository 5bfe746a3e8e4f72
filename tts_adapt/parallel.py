"""Worker processes that are safe next to PyTorch.

Forking a process after PyTorch has started its thread pools can deadlock the
child inside the first tensor operation, so every pool of the toolkit starts
its workers with ``spawn`` and gives each worker a single intra-op thread (the
parallelism is across processes).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
