"""The STN's four conv → 2×2 max-pool → ReLU blocks as one C kernel on the CPU, registered as
the PyTorch operators ``mnistlab::conv_pool_relu`` and ``mnistlab::conv_pool_relu_backward``.

Why a kernel: these small grouped layers spend most of an STN step on one core in oneDNN's
layout copies, zero fills and pooling around the convolutions; ``conv_pool.c`` convolves each
image into an L1-sized buffer and pools it there, and its backward visits only the windows'
maxima — the only positions with a gradient (measurements: README, Timings, and
``docs/benchmarks/conv_pool_*.json``).

Why operators (``torch.library.custom_op``, after torchvision's ``roi_pool``, whose backward is
argmax-only like this one): every argument is checked inside the op — dimensions, dtype,
contiguity, device, the bias's and the dropout scale's shapes, the shapes the C code covers —
and a wrong call raises ``ValueError`` instead of reaching C; the C code checks the shapes
again and returns an error code rather than touching memory. The autograd formula, a fake
(meta) implementation and ``torch.library.opcheck`` come with the registration.

The source is compiled once per source, compiler and CPU (``-O3 -march=native``) into the tool
cache and loaded with ctypes, single-threaded. On a GPU, without a compiler, on another OS, for
other shapes or dtypes, or with ``MNISTLAB_NATIVE=0``, the same blocks run through torch's
grouped layers. The two paths agree to rounding, not to the bit, so which one a stack runs is
part of its checkpoint (:func:`path`): a resume under the other path starts the stack over.
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
# block; and its buffer bounds (the C code checks the same).
BLOCKS = {(7, 3): 8, (5, 3): 5, (5, 1): 10}
MAX_CIN, MAX_CO, MAX_H = 16, 32, 28
CODES = {1: "shapes the C kernel does not cover", 2: "out of memory for its scratch buffers"}

_V, _I = ctypes.c_void_p, ctypes.c_int
_FORWARD = [_V, _V, _V, _V, _I, _I, _I, _I, _I, _I, _V, _V]
_BACKWARD = [_V, _V, _V, _V, _V, _I, _I, _I, _I, _I, _I, _V, _V, _V]


def compiler() -> str | None:
    """The C compiler the kernel is built with: ``$CC``, else gcc (the source uses GCC's vector
    extensions); None on another OS or with ``MNISTLAB_NATIVE=0``."""
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


def build(cc: str, flags: tuple[str, ...] | None = None, folder: Path | None = None) -> Path:
    """The shared library for ``cc`` and ``flags`` (default :data:`FLAGS`), from the cache or
    compiled into it (atomically: concurrent workers each build, one file wins)."""
    flags = FLAGS if flags is None else flags
    version = subprocess.run([cc, "--version"], capture_output=True, check=True).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + version + _cpu() + " ".join(flags).encode())
    target = (folder or cache_dir() / "kernels") / f"conv_pool-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".conv_pool.", suffix=".so")
    os.close(fd)
    try:
        cmd = [cc, *flags, "-o", tmp, str(SOURCE)]
        subprocess.run(cmd, capture_output=True, check=True, timeout=120)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.cpr_forward.argtypes, lib.cpr_forward.restype = _FORWARD, ctypes.c_int
    lib.cpr_backward.argtypes, lib.cpr_backward.restype = _BACKWARD, ctypes.c_int
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (then torch's path runs); built at most once per process."""
    cc = compiler()
    if cc is None:
        return None
    try:
        return load(build(cc))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("native conv-pool kernel unavailable (%s); using torch's layers", e)
        return None


def describe() -> str:
    """For the environment record: which path the conv-pool blocks take on the CPU here."""
    return "native C (conv_pool.c, -march=native)" if library() is not None else "torch"


def path(device: torch.device) -> str:
    """The numeric path of the conv-pool blocks on ``device`` ("native" or "torch"): part of
    what a checkpoint must match, like the device (the two agree to rounding only)."""
    return "native" if device.type == "cpu" and library() is not None else "torch"


# ------------------------------------------------------------------ argument checks


@functools.lru_cache(maxsize=512)
def shape_problem(xs: tuple[int, ...], ws: tuple[int, ...]) -> str | None:
    """Why the kernel does not cover images of shape ``xs`` and kernels of shape ``ws`` (None:
    it does). Cached: a study asks the same few shapes every step."""
    if len(xs) != 5 or len(ws) != 5:
        return (
            "images must be [K, B, Cin, H, H] and kernels [K, Co, Cin, ks, ks], got "
            f"{len(xs)}-d and {len(ws)}-d"
        )
    k, co, cin, ks, ks2 = ws
    h, width = xs[-2:]
    out = h - ks + 1
    block = BLOCKS.get((ks, 3 if out > 8 else 1))
    checks = (
        (xs[0] == k and xs[2] == cin, "images and kernels disagree on K or Cin"),
        (ks == ks2 and h == width, "kernels and images must be square"),
        (block is not None and co % block == 0, f"no register block for ks {ks}, Co {co}"),
        (
            cin == 1 or (ks == 5 and (cin % 5 == 0 or cin % 4 == 0)),
            f"no backward block for Cin {cin}",
        ),
        (co <= MAX_CO and cin <= MAX_CIN and h <= MAX_H, "beyond the kernel's buffers"),
        (2 <= out <= 24, f"output size {out} outside 2..24"),
    )
    return next((why for ok, why in checks if not ok), None)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel covers images ``x`` [K, B, Cin, H, H] and stacked kernels ``weight``
    [K, Co, Cin, ks, ks] on this machine (else torch's layers run)."""
    return (
        x.device.type == weight.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and shape_problem(x.shape, weight.shape) is None
        and library() is not None
    )


_F32, _U8 = torch.float32, torch.uint8


def check(x, w, b, scale=None, code=None, grad=None) -> None:
    """Every argument of the ops, before any of them reaches C: a clear ``ValueError``.
    (Written for speed — it runs on every call of a training step.)"""
    problem = shape_problem(x.shape, w.shape)
    if problem is not None:
        raise ValueError(f"conv_pool_relu: {problem}")
    k, n, _, h, _ = x.shape
    co, hp = w.shape[1], (h - w.shape[-1] + 1) // 2
    pooled = (k, n, co, hp, hp)
    wanted = (
        ("x", x, None, _F32),
        ("weight", w, None, _F32),
        ("bias", b, (k, co), _F32),
        ("scale", scale, (k, n, co), _F32),
        ("code", code, pooled, _U8),
        ("grad", grad, pooled, _F32),
    )
    for name, t, shape, dtype in wanted:
        if t is None:
            continue
        ok_shape = shape is None or t.shape == shape
        if t.dtype is not dtype or t.device.type != "cpu" or not ok_shape or not t.is_contiguous():
            raise ValueError(f"conv_pool_relu: {_why_not(name, t, shape, dtype)}")
    if library() is None:
        raise RuntimeError("conv_pool_relu: the native kernel is not built on this machine")


def _why_not(name: str, t: torch.Tensor, shape, dtype) -> str:
    if t.device.type != "cpu":
        return f"{name} is on {t.device}; the kernel runs on the CPU"
    if t.dtype is not dtype:
        return f"{name} must be {dtype}, got {t.dtype}"
    if shape is not None and t.shape != shape:
        return f"{name} must have shape {list(shape)}, got {list(t.shape)}"
    return f"{name} must be contiguous"


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None and t.numel() else None


def _call(fn, *args) -> None:
    status = fn(*args)
    if status:
        raise RuntimeError(f"conv_pool.c refused the call: {CODES.get(status, status)}")


# ------------------------------------------------------------------ the operators


def forward_impl(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled output [K, B, Co, hp, hp], window codes uint8 of the same shape)."""
    check(x, w, b, scale)
    k, n, cin, h, _ = x.shape
    co, ks = w.shape[1], w.shape[-1]
    hp = (h - ks + 1) // 2
    out = torch.empty((k, n, co, hp, hp), dtype=torch.float32)
    code = torch.empty((k, n, co, hp, hp), dtype=torch.uint8)
    ptrs = (x.data_ptr(), w.data_ptr(), b.data_ptr(), _ptr(scale))
    _call(library().cpr_forward, *ptrs, k, n, cin, co, h, ks, out.data_ptr(), code.data_ptr())
    return out, code


_forward = torch.library.custom_op("mnistlab::conv_pool_relu", mutates_args=())(forward_impl)


@_forward.register_fake
def _(x, w, b, scale):
    k, n, _, h, _ = x.shape
    hp = (h - w.shape[-1] + 1) // 2
    shape = (k, n, w.shape[1], hp, hp)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)


def backward_impl(
    x: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor | None,
    code: torch.Tensor,
    grad: torch.Tensor,
    input_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kernel, bias and input gradients; the input's is empty when not asked for)."""
    k, n, cin, h, _ = x.shape
    co, ks = w.shape[1], w.shape[-1]
    check(x, w, None, scale, code, grad)
    gx = torch.empty_like(x) if input_grad else x.new_empty(0)
    gw, gb = torch.empty_like(w), torch.empty((k, co), dtype=torch.float32)
    ptrs = (x.data_ptr(), w.data_ptr(), _ptr(scale), code.data_ptr(), grad.data_ptr())
    _call(
        library().cpr_backward, *ptrs, k, n, cin, co, h, ks, gw.data_ptr(), gb.data_ptr(), _ptr(gx)
    )
    return gw, gb, gx


_backward = torch.library.custom_op("mnistlab::conv_pool_relu_backward", mutates_args=())(
    backward_impl
)


@_backward.register_fake
def _(x, w, scale, code, grad, input_grad):
    gx = torch.empty_like(x) if input_grad else x.new_empty(0)
    return torch.empty_like(w), w.new_empty((w.shape[0], w.shape[1])), gx


def _setup(ctx, inputs, output) -> None:
    x, w, _, scale = inputs
    ctx.save_for_backward(x, w, scale, output[1])
    ctx.mark_non_differentiable(output[1])


def _autograd(ctx, grad, _code_grad):
    x, w, scale, code = ctx.saved_tensors
    gw, gb, gx = _backward(x, w, scale, code, grad.contiguous(), ctx.needs_input_grad[0])
    return (gx if ctx.needs_input_grad[0] else None), gw, gb, None


_forward.register_autograd(_autograd, setup_context=_setup)


class _Eager(torch.autograd.Function):
    """The eager training path: the two operators' implementations — their checks and C calls,
    the very functions registered — wired to autograd directly. Through the dispatcher each
    call pays custom_op's Python wrappers (about 30 µs, and as much again for the registered
    autograd), several percent of an STN step; ``opcheck``, meta tensors and ``torch.compile``
    go through the registered operators."""

    @staticmethod
    def forward(ctx, x, w, b, scale):
        out, code = forward_impl(x, w, b, scale)
        ctx.save_for_backward(x, w, scale, code)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, scale, code = ctx.saved_tensors
        need = ctx.needs_input_grad[0]
        gw, gb, gx = backward_impl(x, w, scale, code, grad.contiguous(), need)
        return (gx if need else None), gw, gb, None


def conv_pool_relu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(x) * scale, 2))`` per member: images [K, B, Cin, H, H],
    kernels [K, Co, Cin, ks, ks], biases [K, Co], scales [K, B, Co] (Dropout2d's mask) or None
    → [K, B, Co, hp, hp]. Layouts are made contiguous here; the op checks everything else."""
    scale = scale.to(torch.float32).contiguous() if scale is not None else None
    return _Eager.apply(x.contiguous(), weight.contiguous(), bias.contiguous(), scale)
