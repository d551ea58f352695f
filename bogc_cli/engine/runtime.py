"""Seeding, device and precision choices, and the host allocator's settings for CPU training."""

from __future__ import annotations

import ctypes
import os
import random
import sys
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch

from bogc_cli.errors import UserError


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def pick_device(requested: str) -> torch.device:
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA GPU is visible; use train.device=cpu or auto")
        return torch.device("cuda")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


# glibc mallopt parameters and the values set: the largest threshold glibc's own adaptive rule would reach on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20


def keep_freed_host_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the system (Linux only).

    A training step on the CPU allocates and frees tensors of hundreds of kB (a BOGC step on mfeat's MLPs: a
    dozen ``[S, N]`` buffers per step). glibc serves such blocks with ``mmap`` or trims the heap's free top
    after each step, so the next step takes them back page by page: 100-1000 minor page faults and 0.1-1.2 ms
    of system time per BOGC step on mfeat, measured with ``getrusage`` (the step's own work is ~3.5 ms).
    Fixed thresholds (32 MB ``mmap``, 64 MB trim: the largest that glibc's adaptive rule reaches by itself)
    keep those blocks in the heap. It changes no result; returns whether the settings were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def resolved_precision(device: torch.device, precision: str) -> str:
    """``train.precision`` as a run uses it: ``bf16`` (autocast) or ``fp32``; ``auto`` = bf16 on CUDA."""
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def autocast_factory(device: torch.device, precision: str):
    """A zero-argument callable returning the autocast context for this device and precision."""
    if resolved_precision(device, precision) == "fp32":
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; peak resident set size of this process otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and every CUDA device) generator states, to continue a run exactly."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
