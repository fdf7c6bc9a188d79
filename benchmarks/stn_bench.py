"""Epoch time of the tutorial STN and the plain CNN on 60k (study 1) and 180k (study 2) images.

    python benchmarks/stn_bench.py [--epochs 1] [--seeds 1] [-o results/benchmarks/stn.json]
Through the training engine, exactly as the studies train (one stack per model; ``--seeds 3``
is study 1's shape). Reported: seconds per epoch of the whole stack, training and per-epoch
evaluation included, and the 60k → 180k expansion time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.data import KINDS, DeformParams, expand, load_mnist
from mnistlab.progress import Progress
from mnistlab.runs import environment, write_json
from mnistlab.studies.stn.common import STNConfig, StudyData, train_seeds
from mnistlab.train.devices import pick_device
from mnistlab.train.engine import Pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("-o", "--output", default="results/benchmarks/stn.json")
    args = parser.parse_args()
    device = pick_device()
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    t = time.perf_counter()
    big = expand(x, y, seed=0, params=DeformParams(), cache=False)
    big_test = expand(xt, yt, seed=1, params=DeformParams())
    expand_s = time.perf_counter() - t
    cfg = STNConfig(epochs=args.epochs, seeds=args.seeds, device=device.type)
    result = {"device": str(device), "seeds": args.seeds, "expand_seconds": expand_s, "epoch": {}}
    pools = {
        "60k": (
            StudyData(
                Pool(torch.cat([x, xt]), torch.cat([y, yt])),
                len(y),
                torch.zeros(len(yt), dtype=torch.long),
                ("all",),
            ),
            len(y),
        ),
        "180k": (
            StudyData(
                Pool(
                    torch.cat([big.images, big_test.images]),
                    torch.cat([big.labels, big_test.labels]),
                    torch.cat([big.kind, big_test.kind]),
                    KINDS,
                ),
                len(big),
                big_test.kind,
                KINDS,
            ),
            len(big),
        ),
    }
    for label, (data, _) in pools.items():
        for model in ("stn", "baseline"):
            with tempfile.TemporaryDirectory() as tmp:
                res = train_seeds(
                    model,
                    cfg,
                    data,
                    device=device,
                    out=Path(tmp),
                    progress=Progress(),
                    description="bench",
                )
            secs = res.seconds / args.epochs
            result["epoch"][f"{label}/{model}"] = secs
            print(f"{label}/{model}: {secs:.1f} s per epoch ({args.seeds} seed(s) together)")
    result["environment"] = environment()
    write_json(args.output, result)


if __name__ == "__main__":
    main()
