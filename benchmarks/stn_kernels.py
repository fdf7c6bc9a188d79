"""The STN study's training step through the engine, old code vs new, with per-op profiles.

    python benchmarks/stn_kernels.py [--against REV] [--rounds 5] [-o OUTPUT.json]

The study's shape: K = 3 seeds of the STN (and of its CNN) in one stack, batch 64, MNIST-sized
random images, SGD. Each round runs the old code (a git worktree at ``REV``) and the new one in
fresh processes, one after the other; the ratio is taken of the medians. One profile per model
and code version (``torch.profiler``, self CPU time per op, top 12) says where the time went.
"""

from __future__ import annotations

import argparse
import statistics

from mnistlab.runs import environment, write_json
from revisions import side_by_side


def step_ms(use_stn: bool, k: int = 3, steps: int = 150, profile: bool = False) -> dict:
    """ms per member-step of one stack trained for ``steps`` steps (after 10 warm-up steps)."""
    import torch

    from mnistlab.models.stn import StackedSTN, STNNet, init_stn, to_input
    from mnistlab.train.allocator import keep_freed_memory
    from mnistlab.train.engine import Member, Pool, Schedule, train_stack

    keep_freed_memory()  # as the tool's processes do (the library alone no longer sets it)

    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    n = 64 * steps
    pool = Pool(
        torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (n,), generator=g),
    )

    def train(rows: int) -> float:
        members = [
            Member(
                seed=s,
                state=init_stn(use_stn, s).state_dict(),
                train=torch.arange(rows),
                lr=0.01,
                evals={},
                meta={"seed": s},
            )
            for s in range(k)
        ]
        res = train_stack(
            StackedSTN(use_stn, cpu),
            members,
            pool,
            Schedule(epochs=1, batch_size=64, optimizer="sgd"),
            trainable={name for name, _ in STNNet(use_stn).named_parameters()},
            device=cpu,
            prepare=to_input,
        )
        return res.seconds

    train(64 * 10)  # warm-up: oneDNN primitives, allocator
    out: dict = {"ms_per_member_step": 1000 * train(n) / steps / k}
    if profile:
        from torch.profiler import profile as torch_profile

        with torch_profile() as prof:
            train(64 * 20)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows)
        out["profile"] = [
            {
                "op": e.key,
                "share": e.self_cpu_time_total / total,
                "ms_per_step": e.self_cpu_time_total / 1000 / 20,
            }
            for e in rows[:12]
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", help="git revision of the old code")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-o", "--output", default="results/benchmarks/stn_kernels.json")
    args = parser.parse_args()
    result: dict = {"against": args.against, "rounds": args.rounds, "models": {}}
    for model, use_stn in (("stn", True), ("cnn", False)):
        runs = side_by_side(args.against, args.rounds, "stn_kernels", "step_ms", use_stn)
        prof = side_by_side(args.against, 1, "stn_kernels", "step_ms", use_stn, 3, 40, True)
        entry: dict = {}
        for code in ("old", "new") if args.against else ("new",):
            times = [r["ms_per_member_step"] for r in runs[code]]
            entry[code] = {
                "runs": times,
                "median": statistics.median(times),
                "profile": prof[code][0]["profile"],
            }
        if args.against:
            entry["speedup"] = entry["old"]["median"] / entry["new"]["median"]
        result["models"][model] = entry
        line = ", ".join(f"{c} {entry[c]['median']:.2f}" for c in ("old", "new") if c in entry)
        print(
            f"{model}: ms per member-step (median of {args.rounds}): {line}"
            + (f" → {entry['speedup']:.2f}×" if args.against else "")
        )
    result["environment"] = environment()
    write_json(args.output, result)


if __name__ == "__main__":
    main()
