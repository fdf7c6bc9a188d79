"""Epoch time of the tutorial STN and the plain CNN on 60k (study 1) and 180k (study 2) images.

    python benchmarks/stn_bench.py [--epochs 1] [-o results/benchmarks/stn.json]
Uses the same training loop as the studies (uint8 tensors in memory, batched normalisation).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from mnistlab.data import DeformParams, expand, load_mnist
from mnistlab.progress import Progress
from mnistlab.runs import atomic_write_json, environment
from mnistlab.studies.stn import STNConfig, train_model
from mnistlab.train.loop import pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("-o", "--output", default="results/benchmarks/stn.json")
    args = parser.parse_args()
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    t = time.perf_counter()
    big = expand(x, y, seed=0, params=DeformParams(), cache=False)
    expand_s = time.perf_counter() - t
    cfg = dataclasses.replace(STNConfig(), epochs=args.epochs)
    result = {"device": str(pick_device()), "expand_60k_to_180k_seconds": expand_s, "epoch": {}}
    for label, train in (("60k", (x, y, None)), ("180k", (big.images, big.labels, big.kind))):
        for use_stn in (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                _, hist = train_model(
                    use_stn=use_stn,
                    train=train,
                    test=(xt, yt, None),
                    cfg=cfg,
                    seed=0,
                    ckpt=Path(tmp) / "c.pt",
                    progress=Progress(),
                    description="bench",
                )
            secs = sum(r["epoch_seconds"] for r in hist) / len(hist)
            key = f"{label}/{'stn' if use_stn else 'cnn'}"
            result["epoch"][key] = secs
            print(f"{key}: {secs:.1f} s per epoch (training only)")
    result["environment"] = environment()
    atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
