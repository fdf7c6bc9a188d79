"""The device: chosen once at the edge (``--device``), checked there, passed down."""

from __future__ import annotations

import torch

from mnistlab.config import DEVICES, check_device
from mnistlab.errors import MnistlabError

__all__ = ["DEVICES", "fast_cpu_bf16", "pick_device"]


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU. An unavailable device is one clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    check_device(name)
    kind, _, index = name.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise MnistlabError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise MnistlabError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    if kind == "mps" and not _mps_available():
        raise MnistlabError("--device mps: Apple MPS is not available here; use cpu or auto")
    return torch.device(name)


def fast_cpu_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX). Without them bf16
    autocast is emulated and far slower than fp32 (README, design decisions: measured on an
    AVX2-only EPYC), so ``auto`` precision must not pick it there."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:  # not Linux: no way to tell cheaply; fp32 is always safe
        return False
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})
