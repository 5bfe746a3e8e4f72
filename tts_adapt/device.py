"""Where models run and at which precision: the toolkit's one device setting.

Every command that runs a model takes ``--device auto|cpu|cuda|cuda:N|mps`` (and the Python API a
``device=`` argument); :func:`resolve_device` turns it into a :class:`torch.device`, ``auto`` picking
CUDA when present and the CPU otherwise. The model backend owns the device
(:meth:`tts_adapt.models.base.TTSBackend.to`); batches, penalties and curvature statistics follow the
tensors they are computed from, so no tensor of the toolkit is created on a fixed device. Files are
always written from CPU tensors, so what one device saves another reads.

Precision (``--precision fp32|bf16|fp16``, pretraining and adaptation): the model's forward and backward
run under :func:`torch.autocast`; fp16 adds a gradient scaler (:func:`grad_scaler`), bf16 needs none (it
has fp32's exponent range). Everything that sums many small products stays in fp32 outside autocast:
the loss terms the strategies add (the Laplace penalty), the curvature factors and their accumulation.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import fields, is_dataclass, replace

import torch

log = logging.getLogger(__name__)

#: what ``--device`` accepts (``cuda:N`` for any N); ``meta`` is for tests of device placement
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision this machine does not have."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` of a ``--device`` value: ``auto`` (or None) is CUDA when PyTorch sees a
    GPU, else the CPU; ``cuda``, ``cuda:N`` and ``mps`` are refused, with the reason, where they do not
    exist."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"--device {spec!r}: not a device; use one of {', '.join(DEVICE_CHOICES)}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA"
            raise DeviceError(f"--device {spec}: PyTorch sees no CUDA GPU here (this PyTorch is built with "
                              f"{built}; check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {spec}: there are {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(f"--device {spec}: Apple's Metal (mps) is not available on this machine")
    elif device.type not in ("cpu", "meta"):
        raise DeviceError(f"--device {spec!r}: the toolkit runs on {', '.join(DEVICE_CHOICES)}")
    return device


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` if the device can train at it: fp16 needs CUDA (its gradient scaler) or mps; bf16
    runs everywhere but only speeds up GPUs and CPUs with bf16 units (a warning says so on a CPU)."""
    precision = (precision or "fp32").lower()
    if precision not in PRECISIONS:
        raise DeviceError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type not in ("cuda", "mps"):
        raise DeviceError(f"--precision fp16 needs a GPU (the device is {device}); use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 on the CPU: autocast runs, but only CPUs with bf16 units (AMX, AVX512-BF16) are faster")
    return precision


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The autocast context of a forward (and its backward) at ``precision``; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str = "fp32") -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training needs (gradients below fp16's range would vanish); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def _map_tensors(obj, fn):
    """``obj`` with ``fn`` applied to every tensor in it: tensors, dataclasses (a :class:`Batch`), dicts, lists and
    tuples; everything else as it is."""
    if torch.is_tensor(obj):
        return fn(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _map_tensors(getattr(obj, f.name), fn) for f in fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [_map_tensors(v, fn) for v in obj]
        return type(obj)(moved) if isinstance(obj, tuple) else moved
    return obj


def to_device(obj, device: torch.device, non_blocking: bool = False):
    """``obj`` (see :func:`_map_tensors`) with every tensor in it on ``device``."""
    return _map_tensors(obj, lambda t: t.to(device, non_blocking=non_blocking))


def pin(obj):
    """``obj`` with every CPU tensor in page-locked memory (faster, asynchronous copies to a GPU)."""
    return _map_tensors(obj, lambda t: t.pin_memory() if t.device.type == "cpu" else t)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without either."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings of GPU work are meaningless without it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def distributed_backend(device: torch.device) -> str:
    """The torch.distributed backend for processes on ``device``: NCCL between GPUs, gloo on CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def describe_device(device: torch.device) -> str:
    """``device`` as a benchmark prints it: the GPU's name and memory, or the CPU's core count."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2 ** 30:.0f} GB, CUDA {torch.version.cuda})"
    if device.type == "cpu":
        return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return str(device)
