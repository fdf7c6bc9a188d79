"""Cost of one augmented batch (6 members × 128 images, one thread): the affine warp, and
Simard's elastic distortion with its Gaussian blur done three ways — torchvision's
``gaussian_blur`` (a 25×25 convolution), a grouped separable convolution, and the two small
matrix products ``augment.separable_blur`` uses. Alternating rounds, median.

    python benchmarks/elastic_bench.py --out docs/benchmarks/elastic_2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
from torch.nn import functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from mnistlab.train import augment
from mnistlab.train.augment import Augment, augment_batch


def grouped_conv_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    half = size // 2
    t = torch.arange(size, dtype=x.dtype) - half
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


BLURS = {
    "torchvision gaussian_blur": lambda x, s, sg: gaussian_blur(x, [s, s], [sg, sg]),
    "grouped separable conv": grouped_conv_blur,
    "matrix products (used)": augment.separable_blur,
}


def one(spec: Augment, blur, x, rounds: int) -> float:
    gens = [torch.Generator().manual_seed(i) for i in range(x.shape[0])]
    with mock.patch.object(augment, "separable_blur", blur):
        t = time.perf_counter()
        for _ in range(rounds):
            augment_batch(x, [spec] * x.shape[0], gens, [x.shape[1]] * x.shape[0])
    return (time.perf_counter() - t) / rounds * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    x = torch.randint(0, 255, (6, 128, 28, 28), dtype=torch.uint8)
    cases = {"affine (shift ±2, rotate ±10)": (Augment(shift=2.0, rotate=10.0), None)}
    cases |= {f"elastic, {k}": (Augment(elastic=34.0), b) for k, b in BLURS.items()}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, (spec, blur) in cases.items():
            times[name].append(one(spec, blur or augment.separable_blur, x, 10))
    ms = {k: statistics.median(v) for k, v in times.items()}
    for k, v in ms.items():
        print(f"{k:45s} {v:8.2f} ms per batch")
    Path(args.out).write_text(
        json.dumps(
            {
                "what": __doc__.split("\n\n")[0],
                "cpu": platform.processor() or platform.machine(),
                "threads": 1,
                "ms_per_batch": ms,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
