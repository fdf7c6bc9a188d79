"""The STN's four conv → 2×2 max-pool → ReLU blocks as one C kernel on the CPU.

Why: on one core (each ``run all --jobs 2`` worker has one) these blocks took 27.6 of the STN
stack step's 30.5 ms (K = 3, batch 64): oneDNN ran them at 15–43 GFLOP/s, and half of that time
went to layout copies, zero fills and pooling around its convolutions. ``conv_pool.c``
convolves each image into an L1-sized buffer and pools it there, and its backward visits only
the windows' maxima — the only positions with a gradient: 11.7 ms for the four blocks, the
step 2.1× faster (``benchmarks/conv_pool_bench.py``; README, Timings).

The source is compiled once per source, compiler and CPU with gcc (``-O3 -march=native``) into
the tool cache and called through ctypes, single-threaded (split over a stack's members on two
threads it was no faster). On a GPU, without gcc, on another OS, for other shapes or dtypes, or
with ``MNISTLAB_NATIVE=0``, the same blocks run through torch's grouped layers. The two paths
agree to rounding, not to the bit; which one ran is part of every run's environment record.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from mnistlab.io import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("conv_pool.c")
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC")
# conv_pool.c's register blocks: (kernel size, 8-wide vectors per output row) → channels per
# block; and its buffer bounds.
BLOCKS = {(7, 3): 8, (5, 3): 5, (5, 1): 10}
MAX_CIN, MAX_CO, MAX_H = 16, 32, 28

_V, _I = ctypes.c_void_p, ctypes.c_int
_FORWARD = [_V, _V, _V, _V, _I, _I, _I, _I, _I, _I, _V, _V]
_BACKWARD = [_V, _V, _V, _V, _V, _I, _I, _I, _I, _I, _I, _V, _V, _V]


def _compiler() -> str | None:
    """``$CC``, else gcc (the source uses GCC's vector extensions; clang lacks
    ``__builtin_shuffle``, and a failed build only means torch's layers)."""
    if platform.system() != "Linux" or os.environ.get("MNISTLAB_NATIVE", "1") == "0":
        return None
    return shutil.which(os.environ.get("CC", "gcc"))


def _cpu() -> bytes:
    """What ``-march=native`` depends on: the first CPU's model and flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor().encode()
    first = text.split("\n\n", 1)[0].splitlines()
    return "\n".join(line for line in first if line.startswith(("model name", "flags"))).encode()


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, check=True).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + version + _cpu() + " ".join(FLAGS).encode())
    target = cache_dir() / "kernels" / f"conv_pool-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".conv_pool.", suffix=".so")
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, "-o", tmp, str(SOURCE)]
        subprocess.run(cmd, capture_output=True, check=True, timeout=120)
        os.replace(tmp, target)  # atomic: concurrent workers each build, one file wins
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (then torch's path runs); built at most once per process."""
    compiler = _compiler()
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("native conv-pool kernel unavailable (%s); using torch's layers", e)
        return None
    lib.cpr_forward.argtypes, lib.cpr_forward.restype = _FORWARD, None
    lib.cpr_backward.argtypes, lib.cpr_backward.restype = _BACKWARD, None
    return lib


def describe() -> str:
    """For the environment record: which path the conv-pool blocks take on the CPU here."""
    return "native C (conv_pool.c, -march=native)" if library() is not None else "torch"


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel covers images ``x`` [K, B, Cin, H, H] and stacked kernels ``weight``
    [K, Co, Cin, ks, ks] (the shapes its register blocks and buffers were written for)."""
    if x.dim() != 5 or weight.dim() != 5:
        return False
    k, co, cin, ks, ks2 = weight.shape
    h, w = x.shape[-2:]
    out = h - ks + 1
    block = BLOCKS.get((ks, 3 if out > 8 else 1))
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and tuple(x.shape[:1]) + tuple(x.shape[2:3]) == (k, cin)
        and ks == ks2
        and block is not None
        and co % block == 0
        and (cin == 1 or (ks == 5 and (cin % 5 == 0 or cin % 4 == 0)))  # backward blocks
        and co <= MAX_CO
        and cin <= MAX_CIN
        and h == w <= MAX_H
        and 2 <= out <= 24
        and library() is not None
    )


class _ConvPoolReLU(torch.autograd.Function):
    """Images [K, B, Cin, H, H], kernels [K, Co, Cin, ks, ks], biases [K, Co], scales
    [K, B, Co] or None → [K, B, Co, hp, hp]."""

    @staticmethod
    def forward(ctx, x, w, b, scale):
        k, n, cin, h, _ = x.shape
        co, ks = w.shape[1], w.shape[-1]
        hp = (h - ks + 1) // 2
        x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
        scale = scale.to(torch.float32).contiguous() if scale is not None else None
        out = torch.empty((k, n, co, hp, hp), dtype=torch.float32)
        code = torch.empty((k, n, co, hp, hp), dtype=torch.uint8)
        ptrs = (x.data_ptr(), w.data_ptr(), b.data_ptr(), _ptr(scale))
        shape = (n, cin, co, h, ks)
        library().cpr_forward(*ptrs, k, *shape, out.data_ptr(), code.data_ptr())
        ctx.save_for_backward(x, w, scale, code)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, scale, code = ctx.saved_tensors
        k, n, cin, h, _ = x.shape
        co, ks = w.shape[1], w.shape[-1]
        grad = grad.contiguous()
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gw, gb = torch.empty_like(w), torch.empty((k, co), dtype=torch.float32)
        ptrs = (x.data_ptr(), w.data_ptr(), _ptr(scale), code.data_ptr(), grad.data_ptr())
        shape = (n, cin, co, h, ks)
        library().cpr_backward(*ptrs, k, *shape, gw.data_ptr(), gb.data_ptr(), _ptr(gx))
        return gx, gw, gb, None


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def conv_pool_relu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(x) * scale, 2))`` per member: images [K, B, Cin, H, H],
    kernels [K, Co, Cin, ks, ks], biases [K, Co], scales [K, B, Co] (Dropout2d's mask) or None
    → [K, B, Co, hp, hp]. Call only where :func:`applies` holds."""
    return _ConvPoolReLU.apply(x, weight, bias, scale)
