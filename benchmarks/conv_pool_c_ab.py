"""The conv-pool C kernel alone, old source against new, through ctypes (no Python checks, no
autograd): where an STN-step difference between two revisions comes from.

    python benchmarks/conv_pool_c_ab.py [--against REV] [--rounds 5] [-o OUTPUT.json]

Both sources are compiled with the tool's flags into a temporary folder; the STN's four blocks
(K = 3, batch 64) run forward and backward 200 times per round, old and new alternating; the
medians of the rounds are compared. One thread: the kernel's work is single-threaded.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.models.native import FLAGS, compiler
from mnistlab.runs import environment, write_json

SOURCE = "src/mnistlab/models/conv_pool.c"
BLOCKS = [(1, 8, 28, 7), (8, 10, 11, 5), (1, 10, 28, 5), (10, 20, 12, 5)]  # cin, co, h, ks
K, B = 3, 64


def build(source: str, folder: Path, name: str) -> ctypes.CDLL:
    c = folder / f"{name}.c"
    c.write_text(source)
    so = folder / f"{name}.so"
    subprocess.run([compiler(), *FLAGS, str(c), "-o", str(so)], check=True)
    return ctypes.CDLL(str(so))


def block_us(lib: ctypes.CDLL, cin: int, co: int, h: int, ks: int, reps: int = 200):
    """µs per forward and per backward call of one block."""
    p = ctypes.c_void_p
    x, w, b = (
        torch.randn(K, B, cin, h, h),
        torch.randn(K, co, cin, ks, ks) * 0.1,
        torch.randn(K, co),
    )
    hp = (h - ks + 1) // 2
    out, code = torch.empty(K, B, co, hp, hp), torch.empty(K, B, co, hp, hp, dtype=torch.uint8)
    g, gw, gb, gx = (
        torch.randn(out.shape),
        torch.empty_like(w),
        torch.empty_like(b),
        torch.empty_like(x),
    )
    fwd = (
        p(x.data_ptr()),
        p(w.data_ptr()),
        p(b.data_ptr()),
        None,
        K,
        B,
        cin,
        co,
        h,
        ks,
        p(out.data_ptr()),
        p(code.data_ptr()),
    )
    bwd = (
        p(x.data_ptr()),
        p(w.data_ptr()),
        None,
        p(code.data_ptr()),
        p(g.data_ptr()),
        K,
        B,
        cin,
        co,
        h,
        ks,
        p(gw.data_ptr()),
        p(gb.data_ptr()),
        p(gx.data_ptr()) if cin > 1 else None,
    )
    lib.cpr_forward(*fwd), lib.cpr_backward(*bwd)
    t0 = time.perf_counter()
    for _ in range(reps):
        lib.cpr_forward(*fwd)
    t1 = time.perf_counter()
    for _ in range(reps):
        lib.cpr_backward(*bwd)
    return (t1 - t0) / reps * 1e6, (time.perf_counter() - t1) / reps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="cc1a6b6")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-o", "--output", default="results/benchmarks/conv_pool_c_ab.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    old_src = subprocess.run(
        ["git", "show", f"{a.against}:{SOURCE}"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        libs = {
            "old": build(old_src, Path(tmp), "old"),
            "new": build(Path(SOURCE).read_text(), Path(tmp), "new"),
        }
        runs = {
            v: [[block_us(lib, *blk) for blk in BLOCKS] for _ in range(a.rounds)]
            for v, lib in libs.items()
        }
    rows = []
    for i, blk in enumerate(BLOCKS):
        med = {v: [statistics.median(r[i][j] for r in runs[v]) for j in (0, 1)] for v in runs}
        rows.append(
            {
                "block": blk,
                "forward_us": {v: m[0] for v, m in med.items()},
                "backward_us": {v: m[1] for v, m in med.items()},
            }
        )
        print(blk, {v: [round(t) for t in m] for v, m in med.items()})
    total = {v: sum(r[f"{d}_us"][v] for r in rows for d in ("forward", "backward")) for v in runs}
    print(
        f"four blocks, forward + backward: old {total['old']:.0f} µs, new {total['new']:.0f} µs "
        f"→ {total['old'] / total['new']:.3f}×"
    )
    write_json(
        a.output,
        {
            "against": a.against,
            "K": K,
            "batch": B,
            "rounds": a.rounds,
            "blocks": rows,
            "total_us": total,
            "environment": environment(),
        },
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
