"""Few-shot performance: extraction throughput vs machine peak, bf16 vs fp32 accuracy, and the
frozen-feature cache against the uncached (tutorial) path on one reduced configuration.

    python benchmarks/fewshot_bench.py [-o results/benchmarks/fewshot.json] [--skip-uncached]

Throughput does not depend on the weight values, so VGG-19 is timed with random weights (no
offline ImageNet copy exists here); the accuracy comparison uses ResNet-50's real weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mnistlab.data import load_mnist
from mnistlab.models.backbones import ResolvedWeights, build_model, get_backbone, resolve_weights
from mnistlab.progress import Progress
from mnistlab.runs import environment, write_json
from mnistlab.studies.fewshot import study as fewshot
from mnistlab.train.devices import fast_cpu_bf16
from mnistlab.train.features import FrozenFeatures

CPU = torch.device("cpu")


def peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """Large-matmul throughput: the practical peak this process can reach."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_image(model, size: int = 224) -> float:
    x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def throughput(name: str, weights: ResolvedWeights, images: torch.Tensor, precision: str):
    model = build_model(name, weights)
    frozen = FrozenFeatures(model, get_backbone(name).head, CPU, precision)
    frozen(images[:8])  # warm-up (oneDNN primitive creation)
    t = time.perf_counter()
    frozen.extract(images, batch_size=64)
    return len(images) / (time.perf_counter() - t), flops_per_image(frozen.body)


def precision_accuracy(test_limit: int) -> dict:
    """Same images, same heads and seeds: best test accuracy from fp32 vs bf16 features."""
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = fewshot.FewshotConfig(
            backbones=("resnet50",),
            sizes=(10, 50, 90),
            seeds=1,
            precision=precision,
            test_limit=test_limit,
            lr_grid=(),
        )
        with tempfile.TemporaryDirectory() as tmp:
            r = fewshot.run_backbone("resnet50", cfg, Path(tmp), Progress())
        out[precision] = {row["size"]: row["best_test_acc"][0] for row in r["table"]}
        out[f"{precision}_extract_seconds"] = r["extract_seconds"]
    out["difference_points"] = {n: 100 * (out["bf16"][n] - out["fp32"][n]) for n in out["fp32"]}
    return out


def cache_vs_uncached() -> dict:
    """One reduced configuration three ways: uncached, cached cold, cached warm."""
    cfg = fewshot.FewshotConfig(
        backbones=("resnet50",),
        sizes=(10,),
        seeds=1,
        epochs=10,
        test_limit=200,
        val_per_class=5,
        lr_grid=(),
        seed=7,
    )
    res = {}
    for label, c in (
        ("uncached", dataclasses.replace(cfg, cache=False)),
        ("cached_cold", cfg),
        ("cached_warm", cfg),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            r = fewshot.run_backbone("resnet50", c, Path(tmp), Progress())
            res[label] = {
                "seconds": time.perf_counter() - t,
                "best_test_acc": r["table"][0]["best_test_acc"][0],
            }
        print(label, res[label])
    res["ratio_cold"] = res["uncached"]["seconds"] / res["cached_cold"]["seconds"]
    res["ratio_warm"] = res["uncached"]["seconds"] / res["cached_warm"]["seconds"]
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", default="results/benchmarks/fewshot.json")
    parser.add_argument("-n", type=int, default=256, help="images per throughput measurement")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--skip-uncached", action="store_true")
    args = parser.parse_args()
    images = load_mnist("test")[0][: args.n]
    # Without bf16 matrix instructions bf16 is emulated (~50× slower than fp32): measure it
    # on a small matmul only, and leave bf16 out of the extraction and accuracy runs.
    precisions = ("fp32", "bf16") if fast_cpu_bf16() else ("fp32",)
    result: dict = {
        "fast_cpu_bf16": fast_cpu_bf16(),
        "peak_gflops": {
            "fp32": peak_gflops(torch.float32),
            "bf16": peak_gflops(torch.bfloat16, n=512 if not fast_cpu_bf16() else 2048),
        },
    }
    print("peak GFLOP/s", result["peak_gflops"])
    result["throughput"] = {}
    for name in ("resnet50", "vgg19"):
        w = (
            resolve_weights(name)
            if name == "resnet50"
            else ResolvedWeights(None, "random", "v1.5", "random:0")
        )
        for precision in precisions:
            ips, flops = throughput(name, w, images, precision)
            achieved = ips * flops / 1e9
            result["throughput"][f"{name}/{precision}"] = {
                "images_per_s": ips,
                "gflop_per_image": flops / 1e9,
                "achieved_gflops": achieved,
                "fraction_of_peak": achieved / result["peak_gflops"][precision],
            }
            print(name, precision, f"{ips:.1f} img/s", f"{achieved:.0f} GFLOP/s")
    if fast_cpu_bf16():
        result["precision_accuracy"] = precision_accuracy(args.test_limit)
        print("bf16 - fp32 (points):", result["precision_accuracy"]["difference_points"])
    if not args.skip_uncached:
        result["cache"] = cache_vs_uncached()
    result["environment"] = environment()
    write_json(args.output, result)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
