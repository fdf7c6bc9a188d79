"""Keep freed memory in the process instead of handing it back to the kernel after every step.

glibc's malloc serves blocks above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with a fresh ``mmap`` and gives them back on ``free``; it also trims the heap's top
whenever more than twice that threshold lies free there. A training step allocates the same
few-MiB activations every time (the STN's first convolution writes 4.4 MiB per step), so every
step paid for them again as page faults, a large share of its wall time in the kernel. With a
fixed high threshold and no trimming the same blocks are reused (the measured faults, kernel
time and speed-ups: README, Timings; ``benchmarks/allocator_bench.py``). The numbers are
bit-identical: only where memory comes from changes, not the arithmetic. The price is that a
process keeps its peak heap until it exits.

Only glibc has ``mallopt``; elsewhere (macOS, musl) this does nothing.

Where it is applied: only in processes the tool owns — the command line (``cli.main``) and
its ``run all --jobs`` workers — because the setting lasts for the life of the process. A
notebook or another program that imports the library keeps glibc's defaults unless it opts
in by calling :func:`keep_freed_memory` itself (the numbers are the same either way; only the
speed and the process's peak memory differ).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the reusable heap
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: trim only above ~2 GiB of free top


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True when they were set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
