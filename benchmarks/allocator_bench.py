"""glibc's default thresholds vs ``train/allocator.py``'s, on the two heaviest CPU paths.

    python benchmarks/allocator_bench.py [--rounds 3] [-o OUTPUT.json]

Each measurement runs in a fresh process, alternating "default" (glibc's dynamic mmap and trim
thresholds: ``keep_freed_memory`` replaced by a no-op) and "kept" (the project's setting), so
that drift of the machine's speed hits both alike: the STN study's training step (K = 3 seeds,
batch 64, ms per member-step, minor page faults and kernel time per stack step) and frozen
ResNet-50 features (fp32, and bf16 where the CPU has bf16 units; images per second, random
weights: throughput does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics

from mnistlab.runs import environment, write_json
from revisions import ROOT, call


def _switch(keep: bool) -> None:
    if keep:
        return
    from mnistlab.train import allocator, engine, features

    for module in (allocator, engine, features):
        module.keep_freed_memory = lambda: False


def stn_step(keep: bool, steps: int = 150) -> dict:
    """ms per member-step, page faults and kernel seconds per stack step."""
    import resource

    _switch(keep)
    from stn_kernels import step_ms

    step_ms(True, steps=20)  # warm-up: oneDNN primitives, the heap's first growth
    before = resource.getrusage(resource.RUSAGE_SELF)
    ms = step_ms(True, steps=steps)["ms_per_member_step"]
    after = resource.getrusage(resource.RUSAGE_SELF)
    stack_steps = steps + 10  # step_ms warms up on 10 steps of its own
    return {
        "ms_per_member_step": ms,
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / stack_steps,
        "kernel_ms_per_step": 1000 * (after.ru_stime - before.ru_stime) / stack_steps,
    }


def features(keep: bool, precision: str, images: int = 192) -> dict:
    """Images per second of the head-less, fused ResNet-50 on MNIST-sized inputs."""
    import time

    import torch
    import torchvision

    _switch(keep)
    from mnistlab.train.features import FrozenFeatures

    frozen = FrozenFeatures(torchvision.models.resnet50(), "fc", torch.device("cpu"), precision)
    x = torch.randint(0, 256, (images, 28, 28), dtype=torch.uint8)
    frozen.extract(x[:64])  # warm-up
    t = time.perf_counter()
    frozen.extract(x, batch_size=64)
    return {"images_per_s": images / (time.perf_counter() - t)}


def _measure(rounds: int, function: str, *args) -> dict:
    runs: dict[str, list] = {"default": [], "kept": []}
    for _ in range(rounds):
        for mode in runs:
            runs[mode].append(
                call(ROOT / "src", "allocator_bench", function, mode == "kept", *args)
            )
    return {
        mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]} | {"runs": rs}
        for mode, rs in runs.items()
    }


def main() -> None:
    from mnistlab.train.devices import fast_cpu_bf16

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-o", "--output", default="results/benchmarks/allocator.json")
    args = parser.parse_args()
    result: dict = {"rounds": args.rounds, "stn_step": _measure(args.rounds, "stn_step")}
    s = result["stn_step"]
    result["stn_step"]["speedup"] = (
        s["default"]["ms_per_member_step"] / s["kept"]["ms_per_member_step"]
    )
    print(
        f"STN step: {s['default']['ms_per_member_step']:.2f} → "
        f"{s['kept']['ms_per_member_step']:.2f} ms per member-step "
        f"({s['speedup']:.2f}×); faults per stack step {s['default']['minor_faults_per_step']:.0f}"
        f" → {s['kept']['minor_faults_per_step']:.0f}; kernel time per stack step "
        f"{s['default']['kernel_ms_per_step']:.1f} → {s['kept']['kernel_ms_per_step']:.1f} ms"
    )
    for precision in ("fp32", "bf16") if fast_cpu_bf16() else ("fp32",):
        f = result[f"features_{precision}"] = _measure(args.rounds, "features", precision)
        f["speedup"] = f["kept"]["images_per_s"] / f["default"]["images_per_s"]
        print(
            f"ResNet-50 features {precision}: {f['default']['images_per_s']:.1f} → "
            f"{f['kept']['images_per_s']:.1f} img/s ({f['speedup']:.2f}×)"
        )
    result["environment"] = environment()
    write_json(args.output, result)


if __name__ == "__main__":
    main()
