"""Process settings of the training commands that change how fast they run, never what they compute.

``runtime.cpu_allocator`` in params.yaml:

- ``tuned`` (default): on Linux with glibc, the training process sets ``mallopt(M_MMAP_MAX, 0)`` and a 2 GiB
  ``M_TRIM_THRESHOLD``, so that freed tensors stay in the process heap and the next step's tensors of the same
  size reuse them. glibc otherwise serves every allocation above its mmap threshold (at most 32 MiB on 64-bit)
  with a fresh ``mmap`` and unmaps it on free, so each such tensor page-faults its memory in again on every step.
  The batched MoE expert weights are such tensors (E x d x 4d floats: 32 MiB per layer at paper width, 8 experts),
  and so are their gradients, created anew in every backward pass: writing one cost 19 ms instead of 11 ms
  (``benchmarks/README.md``). The price: memory freed during training is kept by the process for reuse rather
  than returned to the system, and the peak RSS of a step was 9-15 % higher in ``benchmarks/pretrain_step.py``
  (paper width 3754 vs 3430 MiB, demo width at Table 11's batch 933 vs 812 MiB). Elsewhere (macOS, musl) it
  does nothing.
- ``system``: leave the C allocator as it is.

CUDA tensors are unaffected (PyTorch's caching allocator already recycles device memory).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Mapping

from .errors import XGeoError

CPU_ALLOCATORS = ("tuned", "system")
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = (1 << 31) - 1

_tuned = False


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):  # musl has a mallopt that ignores everything
            return None
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def _check(mode: str) -> str:
    if mode not in CPU_ALLOCATORS:
        raise XGeoError(f"params.yaml: runtime.cpu_allocator is {mode!r}; expected one of {list(CPU_ALLOCATORS)}")
    return mode


def configure_cpu_allocator(mode: str = "tuned") -> bool:
    """Apply ``runtime.cpu_allocator``; returns whether the glibc settings are in effect in this process."""
    global _tuned
    _check(mode)
    if mode == "system" or _tuned:
        return _tuned
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success
    _tuned = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _tuned


def configure(params: Mapping, device_type: str = "cpu") -> dict:
    """Process settings for a training command on ``device_type``, from the ``runtime`` section of params."""
    runtime = params.get("runtime") or {}
    mode = _check(str(runtime.get("cpu_allocator", "tuned")))  # on every device: a typo should not wait for a CPU run
    tuned = configure_cpu_allocator(mode) if device_type == "cpu" else False
    return {"cpu_allocator": "tuned" if tuned else "system"}


# ------------------------------------------------------------------------------------------ device and precision
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp32")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def select_device(requested: str, key: str, local_rank: int = 0):
    """The torch device of ``requested`` (auto | cpu | cuda, read from params ``key``): ``auto`` is CUDA when
    present, else the CPU; ``cuda`` without a CUDA device is an error naming the key. Under torchrun each process
    takes GPU ``LOCAL_RANK`` (modulo the visible count)."""
    import torch

    requested = str(requested)
    if requested not in DEVICES:
        raise XGeoError(f"params {key}: expected one of {list(DEVICES)}, found {requested!r}")
    if requested == "cpu" or (requested == "auto" and not cuda_available()):
        return torch.device("cpu")
    if not cuda_available():
        raise XGeoError(f"params {key} is 'cuda' but torch sees no CUDA device (torch {torch.__version__}, "
                        f"CUDA build {torch.version.cuda or 'none'}); set {key}: auto or cpu, or run on a GPU node")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def autocast(amp: str, device, key: str):
    """The autocast context of ``amp`` (auto | bf16 | fp32, params ``key``) on ``device``: ``auto`` is bf16 on CUDA
    and fp32 elsewhere; ``bf16`` autocasts on any device."""
    import contextlib

    import torch

    amp = str(amp)
    if amp not in AMP_MODES:
        raise XGeoError(f"params {key}: expected one of {list(AMP_MODES)}, found {amp!r}")
    if amp == "fp32" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
