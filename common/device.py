"""Where tensors are computed: ``train.device`` / ``--device`` -> a ``torch.device``.

``auto`` (CUDA when this process sees a GPU, else the CPU), ``cpu`` (the default: CPU runs are
bit-identical to the runs before the option existed) or ``cuda`` / ``cuda:N``. A CUDA request on
a machine without one fails here, in one line, before anything starts. Every command resolves
the setting once and passes the ``torch.device`` down; training, evaluation and inference move
each batch to the device of the model's parameters where the batch is made, and
``common/model.get_params`` brings weights back as CPU numpy (what the wire carries).

On CUDA the computation stays float32: no autocast (AMP), and TF32 off for convolutions and
matmuls; cuDNN is asked for deterministic algorithms (``cudnn.deterministic``, no benchmark
autotuning). Untested on a GPU (docs/gpu.md).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a device is resolved: configs stay torch-free
    import torch

DEVICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A device setting that is malformed or names hardware this process does not have."""


# The memory layout of the model's convolutions (``common.model.build_model``): channels_last,
# the default, or nchw, the layout before it; a switch for benchmarks that compare the two
# (bench/perf/time_layout.py). Every process of a run inherits it; versions.json records it.
LAYOUT_ENV = "FEDONCO_LAYOUT"
LAYOUTS = ("channels_last", "nchw")


def default_layout() -> str:
    """The layout ``FEDONCO_LAYOUT`` asks for (channels_last when unset); a DeviceError names
    the allowed values for anything else."""
    value = os.environ.get(LAYOUT_ENV, LAYOUTS[0])
    if value not in LAYOUTS:
        raise DeviceError(f"{LAYOUT_ENV}={value!r}: expected one of {', '.join(LAYOUTS)}")
    return value


# glibc's malloc hands large blocks back to the kernel when they are freed (mmap'd blocks above a
# threshold, the heap's top above another), so a training step that allocates and frees the same
# few-MB activations and per-sample gradients every step page-faults them in again every step.
# "keep" (the default) keeps freed memory in the process; "system" leaves malloc as it is.
# Speed only: the arithmetic, and so every model hash, is the same either way (torch aligns its
# buffers itself). The process keeps its peak memory until it exits.
ALLOCATOR_ENV = "FEDONCO_ALLOCATOR"
ALLOCATORS = ("keep", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_allocator = "system"  # what this process has: malloc untouched until keep_freed_memory runs


def allocator_in_effect() -> str:
    """The allocator this process has: "keep" once ``keep_freed_memory`` changed its malloc,
    else "system"."""
    return _allocator


def keep_freed_memory() -> str:
    """Apply ``FEDONCO_ALLOCATOR`` to this process; returns the allocator in effect: "keep"
    (glibc's mallopt: blocks up to 1 GiB from the heap, which is never trimmed), or "system"
    when asked for or where malloc is not glibc's (mallopt missing or refusing). Idempotent; a
    DeviceError names the allowed values for anything else."""
    global _allocator
    value = os.environ.get(ALLOCATOR_ENV, ALLOCATORS[0])
    if value not in ALLOCATORS:
        raise DeviceError(f"{ALLOCATOR_ENV}={value!r}: expected one of {', '.join(ALLOCATORS)}")
    if value == "system" or _allocator == "keep":
        return _allocator  # a process that kept its memory cannot give it back: it says so
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows)
        return _allocator
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1):
        _allocator = "keep"
    return _allocator  # "system" e.g. under musl, whose mallopt does nothing and says so


def device_spec(text: str) -> str:
    """``text`` if it is a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``), else
    ``DeviceError``: the syntax only, nothing is asked of the hardware (nor is torch imported)."""
    spec = str(text).strip().lower()
    if not _SPEC.fullmatch(spec):
        raise DeviceError(f"device {text!r} is not one of {DEVICES}")
    return spec


def resolve_device(text: str) -> torch.device:
    """The ``torch.device`` of a device setting, checked against this machine: ``auto`` is
    ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; ``cuda`` without CUDA, or a
    ``cuda:N`` beyond the GPUs this process sees, is a ``DeviceError`` naming the fix."""
    import torch

    spec = device_spec(text)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no GPU visible"
        raise DeviceError(
            f"device {spec!r} asked for, but this process has no CUDA ({build}); "
            "use --device cpu (or auto), or install a CUDA torch (README)"
        )
    device = torch.device("cuda" if spec == "auto" else spec)
    index = 0 if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device {spec!r} asked for, but this process sees {count} GPU(s) "
            f"(cuda:0..cuda:{count - 1}; CUDA_VISIBLE_DEVICES narrows them)"
        )
    _float32_cuda()
    return torch.device("cuda", index)


def _float32_cuda() -> None:
    """Full float32 and repeatable kernels on CUDA (AMP is never used; TF32 would be a silent
    10-bit mantissa for convolutions, on by default in torch)."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def device_record(device: torch.device | str) -> dict[str, str]:
    """What a run records about where it computed: ``{"device": "cpu"}``, or for CUDA
    ``{"device": "cuda:0", "gpu": <the GPU's name>}`` (never a GPU name for a CPU run). A string
    that is not a resolved device (a Ray driver records what its cells were asked to use) is
    recorded as given."""
    if isinstance(device, str):
        return {"device": device}
    if device.type == "cuda":
        import torch

        index = 0 if device.index is None else device.index
        return {"device": f"cuda:{index}", "gpu": torch.cuda.get_device_name(index)}
    return {"device": str(device)}


__all__ = ["DEVICES", "DeviceError", "device_record", "device_spec", "resolve_device"]
