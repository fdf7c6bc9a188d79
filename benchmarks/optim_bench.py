"""The stack's Adam (``train/optim.py``: PyTorch's fused kernel called once per (lr, L2)
group on the stack's flat buffer) against the public ``torch.optim.Adam(fused=True)`` with
one parameter group per member row, at the shapes the studies train.

The public optimiser keeps one lr per parameter *group*, so each member row becomes a
``Parameter`` aliasing the flat buffer (two, where L2 applies to the weight matrices only: the
decayed slice and the rest), its gradient a view of the flat gradient. Both are fed the same
gradients; the script checks that the parameters stay bit-identical and times a step.

    python benchmarks/optim_bench.py [-o results/benchmarks/optim.json] [--steps 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from mnistlab.runs import environment, write_json
from mnistlab.train.optim import StackedOptimizer

# (name, members K, parameters per member P, decayed columns, distinct (lr, L2) pairs)
SHAPES = (
    ("digits-best transfer grid: 5×100 MLP head+trunk", 60, 119_305, 118_800, 6),
    ("digits tuning folds: 5×100 MLP", 3, 119_305, 118_800, 1),
    ("few-shot heads: 2048→10 linear", 15, 20_490, 20_480, 3),
)


def _setup(k: int, p: int, groups: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(k, p, generator=g)
    lrs = [(1e-3, 3e-3, 1e-2)[i % 3] for i in range(k)]
    l2s = [(0.0, 1e-4)[(i // 3) % 2] if groups > 3 else 0.0 for i in range(k)]
    return flat, lrs[:k], l2s[:k]


def _public(flat: torch.Tensor, lrs, l2s, n_decay: int):
    groups = []
    for k in range(flat.shape[0]):
        parts = (
            [(flat[k, :n_decay], l2s[k]), (flat[k, n_decay:], 0.0)] if l2s[k] else [(flat[k], 0.0)]
        )
        for view, wd in parts:
            groups.append({"params": [torch.nn.Parameter(view)], "lr": lrs[k], "weight_decay": wd})
    return torch.optim.Adam(groups, fused=True), groups


def _run(name: str, k: int, p: int, n_decay: int, n_groups: int, steps: int) -> dict:
    grads = torch.randn(4, k, p, generator=torch.Generator().manual_seed(1)) * 1e-2
    flat_a, lrs, l2s = _setup(k, p, n_groups)
    ours = StackedOptimizer(flat_a, kind="adam", lr=lrs, weight_decay=l2s, n_decay=n_decay)
    flat_b = flat_a.clone()
    public, groups = _public(flat_b, lrs, l2s, n_decay)
    members = tuple(range(k))
    active = torch.ones(k, dtype=torch.bool)
    views = [(grp["params"][0], grp) for grp in groups]
    offsets = []
    for k_ in range(k):  # where each public parameter's gradient sits in the flat gradient
        cols = [(0, n_decay), (n_decay, p)] if l2s[k_] else [(0, p)]
        offsets += [(k_, lo, hi) for lo, hi in cols]

    def step_ours(i):
        ours.grad.copy_(grads[i % 4])
        ours.step(active, members)

    def step_public(i):
        for (param, _), (row, lo, hi) in zip(views, offsets, strict=True):
            param.grad = grads[i % 4, row, lo:hi]
        public.step()

    times = {}
    for label, fn in (("stacked (ours)", step_ours), ("torch.optim.Adam(fused=True)", step_public)):
        t0 = time.perf_counter()
        for i in range(steps):
            fn(i)
        times[label] = (time.perf_counter() - t0) / steps * 1e3
    identical = torch.equal(flat_a, flat_b)
    ratio = times["torch.optim.Adam(fused=True)"] / times["stacked (ours)"]
    print(
        f"{name}: K={k}, P={p}: ours {times['stacked (ours)']:.3f} ms/step, public "
        f"{times['torch.optim.Adam(fused=True)']:.3f} ms/step ({ratio:.2f}× ours); "
        f"bit-identical: {identical}"
    )
    return {"shape": name, "K": k, "P": p, "ms_per_step": times, "identical": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("-o", "--output", default="results/benchmarks/optim.json")
    args = parser.parse_args()
    rows = [_run(*shape, steps=args.steps) for shape in SHAPES]
    write_json(args.output, {"environment": environment(), "results": rows})


if __name__ == "__main__":
    main()
