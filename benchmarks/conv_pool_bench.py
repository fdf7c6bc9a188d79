"""The STN's conv → 2×2 max-pool → ReLU blocks: the native kernel (``models/native.py``) against
torch's grouped layers, per block and in the whole training step, on one thread.

    python benchmarks/conv_pool_bench.py [--repeats 100] [--rounds 5] [-o OUTPUT.json]

One thread, as each ``run all --jobs 2`` worker trains. Per block, at the study's shape (K = 3
members, batch 64): forward, forward + backward, GFLOP/s (forward, kernel gradient and, where
the input needs one, input gradient counted densely, as torch computes them), and the largest
relative difference of output and gradients between the two paths. Then the STN's and the
CNN's stack step through the engine (``stn_kernels.step_ms``), the two paths alternating over
``--rounds`` rounds in this process (medians), and a large fp32 matmul on the same core: the
peak a convolution could reach, so the step's time with every block at that peak is the bound
on what faster convolution kernels alone could give.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from mnistlab.runs import environment, write_json

# name: (input channels, output channels, kernel, input size, input needs a gradient)
BLOCKS = {
    "localization.0": (1, 8, 7, 28, False),
    "localization.3": (8, 10, 5, 11, True),
    "classifier.conv1": (1, 10, 5, 28, True),
    "classifier.conv2": (10, 20, 5, 12, True),
}
K, BATCH = 3, 64


def _timed(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


@contextmanager
def _torch_path(on: bool):
    """Within: every block through torch's grouped layers (when ``on``)."""
    from mnistlab.models import native

    applies = native.applies
    if on:
        native.applies = lambda *a: False
    try:
        yield
    finally:
        native.applies = applies


def block(name: str, repeats: int) -> dict:
    import torch

    from mnistlab.models import stack

    cin, cout, ks, size, needs_grad = BLOCKS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(K, BATCH, cin, size, size, generator=g).requires_grad_(needs_grad)
    p = {
        "l.weight": (0.2 * torch.randn(K, cout, cin, ks, ks, generator=g)).requires_grad_(),
        "l.bias": (0.1 * torch.randn(K, cout, generator=g)).requires_grad_(),
    }
    leaves = [t for t in (x, p["l.weight"], p["l.bias"]) if t.requires_grad]
    gout = torch.randn(K, BATCH, cout, (size - ks + 1) // 2, (size - ks + 1) // 2, generator=g)
    macs = BATCH * K * cout * (size - ks + 1) ** 2 * cin * ks * ks
    gflop = 2 * macs * (3 if needs_grad else 2) / 1e9
    out: dict = {"gflop": gflop}
    results = {}
    for path in ("torch", "native"):
        with _torch_path(path == "torch"):

            def forward() -> None:
                with torch.no_grad():
                    stack.conv_pool_relu(x, p, "l", torch.channels_last)

            def both() -> None:
                y = stack.conv_pool_relu(x, p, "l", torch.channels_last)
                torch.autograd.grad(y, leaves, gout)

            y = stack.conv_pool_relu(x, p, "l", torch.channels_last)
            results[path] = [y.detach(), *torch.autograd.grad(y, leaves, gout)]
            t_all = _timed(both, repeats)
            out[path] = {
                "forward_ms": _timed(forward, repeats),
                "forward_backward_ms": t_all,
                "gflops": gflop * 1000 / t_all,
            }
    out["speedup"] = out["torch"]["forward_backward_ms"] / out["native"]["forward_backward_ms"]
    out["max_rel_difference"] = max(
        float((a - b).abs().max() / b.abs().max())
        for a, b in zip(results["native"], results["torch"], strict=True)
    )
    return out


def steps(rounds: int) -> dict:
    from stn_kernels import step_ms

    runs: dict = {f"{m}_{p}": [] for m in ("stn", "cnn") for p in ("torch", "native")}
    for _ in range(rounds):
        for path in ("torch", "native"):
            with _torch_path(path == "torch"):
                for model, use_stn in (("stn", True), ("cnn", False)):
                    ms = step_ms(use_stn, k=K, steps=100)["ms_per_member_step"]
                    runs[f"{model}_{path}"].append(ms)
    return {
        "median_ms_per_member_step": {k: statistics.median(v) for k, v in runs.items()},
        "runs": runs,
    }


def _peak() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / _timed(lambda: a @ b, 5) / 1e6


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from mnistlab.models import native
    from mnistlab.train.allocator import keep_freed_memory

    keep_freed_memory()
    if native.library() is None:
        raise SystemExit("the native kernel is not available here (no C compiler?)")
    blocks = {name: block(name, args.repeats) for name in BLOCKS}
    step = steps(args.rounds)
    peak = _peak()
    flops = sum(r["gflop"] for r in blocks.values())
    bound = {}
    for path in ("torch", "native"):
        ms = K * step["median_ms_per_member_step"][f"stn_{path}"]
        spent = sum(r[path]["forward_backward_ms"] for r in blocks.values())
        bound[path] = {
            "stn_step_ms": ms,
            "blocks_ms": spent,
            "at_peak_ms": ms - spent + flops / peak * 1000,
        }
    result = {
        "environment": environment(),
        "threads": 1,
        "matmul_peak_gflops": peak,
        "blocks": blocks,
        "steps": step,
        "bound": bound,
    }
    for name, r in blocks.items():
        t, n = r["torch"], r["native"]
        print(
            f"{name}: torch {t['forward_backward_ms']:.2f} ms ({t['gflops']:.0f} GFLOP/s), "
            f"native {n['forward_backward_ms']:.2f} ms ({n['gflops']:.0f}) → {r['speedup']:.2f}×; "
            f"max rel. difference {r['max_rel_difference']:.1e}"
        )
    med = step["median_ms_per_member_step"]
    for model in ("stn", "cnn"):
        t, n = med[f"{model}_torch"], med[f"{model}_native"]
        print(f"{model} step: torch {t:.2f}, native {n:.2f} ms per member-step → {t / n:.2f}×")
    for path, b in bound.items():
        print(
            f"{path}: STN step {b['stn_step_ms']:.1f} ms (K={K}), blocks {b['blocks_ms']:.1f}; "
            f"every block at the {peak:.0f} GFLOP/s matmul peak: {b['at_peak_ms']:.1f} ms"
        )
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
