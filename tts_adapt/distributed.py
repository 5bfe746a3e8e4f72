"""The process group of a ``torchrun`` launch, for the stages that run data-parallel (pretraining and the
curvature fit). Outside torchrun every helper is a no-op for one process, so callers need no branches."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group when started by torchrun (gloo: CPU); a no-op otherwise. Returns
    (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        # N processes x the default thread pool oversubscribe the cores, and spinning
        # OpenMP threads then slow every process down many times over
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return dist_info()


def agree(flag: bool, *, every: bool) -> bool:
    """One decision for all processes: ``every`` True asks whether all processes say yes (a step is
    finite everywhere), False whether any does (one process is out of time). Processes that decided
    differently would otherwise fall out of step at their next collective call."""
    if dist_info()[1] == 1:
        return flag
    t = torch.tensor(float(flag))
    dist.all_reduce(t, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX)
    return bool(t)


def all_reduce_sums(sums: dict[str, torch.Tensor]) -> None:
    """Sum every tensor of ``sums`` over the processes, in place of the dict's values (one flat call)."""
    if dist_info()[1] == 1:
        return
    keys = sorted(sums)
    flat = torch.cat([sums[k].reshape(-1) for k in keys])
    dist.all_reduce(flat)
    offset = 0
    for k in keys:
        n = sums[k].numel()
        sums[k] = flat[offset:offset + n].view_as(sums[k]).clone()
        offset += n


def gather_rng_state() -> torch.Tensor:
    """This process's torch RNG state, or with several processes theirs stacked ``(world, n)``."""
    rng = torch.get_rng_state()
    rank, world = dist_info()
    if world == 1:
        return rng
    gathered = [torch.empty_like(rng) for _ in range(world)]
    dist.all_gather(gathered, rng)
    return torch.stack(gathered)


def set_rng_state(saved: torch.Tensor) -> None:
    """Restore what :func:`gather_rng_state` returned, each process its own row."""
    torch.set_rng_state(saved[dist_info()[0]] if saved.dim() > 1 else saved)
