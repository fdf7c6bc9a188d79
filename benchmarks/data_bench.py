"""Data-layer timings: MNIST load from the cache, and ``expand`` throughput (1 core vs all).

    python benchmarks/data_bench.py [-n 60000] [-o results/benchmarks/data.json]
The expand cache is bypassed (cache=False) so the deformation work itself is timed.
"""

from __future__ import annotations

import argparse
import time

from mnistlab.data import expand, load_mnist
from mnistlab.data import mnist as mnist_mod
from mnistlab.data.deform import default_workers
from mnistlab.runs import environment, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=60000, help="training images to expand")
    parser.add_argument("-o", "--output", default="results/benchmarks/data.json")
    args = parser.parse_args()

    load_mnist("train")  # make sure the cache is filled before timing it
    loads = []
    for _ in range(3):
        mnist_mod.clear_memo()
        t = time.perf_counter()
        load_mnist("train")
        load_mnist("test")
        loads.append(time.perf_counter() - t)
    images, labels = load_mnist("train")
    images, labels = images[: args.n], labels[: args.n]
    result = {"load_70k_from_cache_s": min(loads), "n_images": args.n, "expand": {}}
    for workers in sorted({1, default_workers()}):
        t = time.perf_counter()
        expand(images, labels, seed=0, workers=workers, cache=False)
        dt = time.perf_counter() - t
        result["expand"][f"workers={workers}"] = {
            "seconds": dt,
            "deformed_images_per_s": 2 * args.n / dt,
        }
        print(f"expand {args.n}→{3 * args.n} with {workers} worker(s): {dt:.2f} s")
    print(f"load 70k from cache: {min(loads) * 1000:.0f} ms")
    result["environment"] = environment()
    write_json(args.output, result)


if __name__ == "__main__":
    main()
