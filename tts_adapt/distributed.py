"""The process group of a ``torchrun`` launch, for the stages that run data-parallel (pretraining and the
curvature fit). Outside torchrun every helper is a no-op for one process, so callers need no branches.

Processes on CPUs talk over gloo, processes on GPUs over NCCL, one GPU each (``LOCAL_RANK``), single-node
(``torchrun --nproc_per_node N``) or multi-node (``torchrun --nnodes M --node_rank K --rdzv_endpoint
HOST:PORT``). NCCL reduces only GPU tensors, so every collective here runs on the group's device."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from tts_adapt.device import distributed_backend, resolve_device


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_device(device: str | torch.device | None = "auto") -> torch.device:
    """This process's device: ``resolve_device(device)``, and under torchrun on CUDA the GPU of the process's
    ``LOCAL_RANK`` (one GPU per process; ``--device cuda:N`` is then refused as ambiguous)."""
    resolved = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if resolved.type == "cuda" and world > 1:
        if str(device).startswith("cuda:"):
            raise ValueError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                             "use --device cuda (or auto) and CUDA_VISIBLE_DEVICES to choose the GPUs")
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(resolved)
    return resolved


def init_distributed(device: torch.device | None = None) -> tuple[int, int]:
    """Join the process group when started by torchrun (gloo on CPUs, NCCL on GPUs); a no-op otherwise.
    Returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        device = device or torch.device("cpu")
        dist.init_process_group(distributed_backend(device), device_id=device if device.type == "cuda" else None)
        if device.type == "cpu":
            # N processes x the default thread pool oversubscribe the cores, and spinning
            # OpenMP threads then slow every process down many times over
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return dist_info()


def group_device() -> torch.device:
    """The device collectives run on: the process's GPU under NCCL, else the CPU."""
    if dist_info()[1] > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(flag: bool, *, every: bool) -> bool:
    """One decision for all processes: ``every`` True asks whether all processes say yes (a step is
    finite everywhere), False whether any does (one process is out of time). Processes that decided
    differently would otherwise fall out of step at their next collective call."""
    if dist_info()[1] == 1:
        return flag
    t = torch.tensor(float(flag), device=group_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX)
    return bool(t)


def all_reduce_sums(sums: dict[str, torch.Tensor]) -> None:
    """Sum every tensor of ``sums`` over the processes, in place of the dict's values (one flat call, on the
    group's device; the results come back on each tensor's own device)."""
    if dist_info()[1] == 1:
        return
    keys = sorted(sums)
    flat = torch.cat([sums[k].reshape(-1).to(group_device()) for k in keys])
    dist.all_reduce(flat)
    offset = 0
    for k in keys:
        n = sums[k].numel()
        sums[k] = flat[offset:offset + n].view_as(sums[k]).to(sums[k].device, copy=True)
        offset += n


def _rng_state(device: torch.device | None) -> torch.Tensor:
    """The CPU generator's state, followed on a GPU by that GPU's generator's (dropout draws there)."""
    rng = torch.get_rng_state()
    if device is not None and device.type == "cuda":
        rng = torch.cat([rng, torch.cuda.get_rng_state(device)])
    return rng


def gather_rng_state(device: torch.device | None = None) -> torch.Tensor:
    """This process's RNG state (:func:`_rng_state`), or with several processes theirs stacked ``(world, n)``."""
    rng = _rng_state(device)
    rank, world = dist_info()
    if world == 1:
        return rng
    gathered = [torch.empty_like(rng, device=group_device()) for _ in range(world)]
    dist.all_gather(gathered, rng.to(group_device()))
    return torch.stack([g.cpu() for g in gathered])


def set_rng_state(saved: torch.Tensor, device: torch.device | None = None) -> None:
    """Restore what :func:`gather_rng_state` returned, each process its own row; a state saved on another
    kind of device restores the CPU generator only (a GPU run resumed on a CPU, or the other way)."""
    mine = saved[dist_info()[0]] if saved.dim() > 1 else saved
    cpu_size = torch.get_rng_state().numel()
    torch.set_rng_state(mine[:cpu_size].contiguous())
    if device is not None and device.type == "cuda" and mine.numel() > cpu_size:
        torch.cuda.set_rng_state(mine[cpu_size:].contiguous(), device)
