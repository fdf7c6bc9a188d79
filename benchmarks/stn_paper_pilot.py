"""How the stn-paper study's CPU budget got its learning rate: on a validation split, never
the test set.

The CPU budget (``studies/stn/paper.py``: SGD with momentum 0.9, batch 64, cosine over a few
epochs) needs one learning rate for CNN and ST-CNN alike. This script trains both on the
first 50k distorted training images with several rates (one member each, one stack per model)
and scores the last 10k distorted training images after every epoch. Its JSON goes to
``docs/benchmarks/`` (dated); the study's default is the rate with the lowest mean validation
error over the distortions tried and both models.

    python benchmarks/stn_paper_pilot.py --distortions R,E --lrs 0.005,0.01,0.02,0.05 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mnistlab.data import load_mnist
from mnistlab.data.distort import distort
from mnistlab.studies.stn.paper import BUDGETS, MODELS, STNPaperConfig, members, train_model
from mnistlab.train.engine import Pool

VALIDATION = 10_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distortions", default="R,E")
    ap.add_argument("--lrs", default="0.005,0.01,0.02,0.05")
    ap.add_argument("--epochs", type=int, default=BUDGETS["cpu"].epochs)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(f"docs/benchmarks/stn_paper_pilot_{time.strftime('%Y-%m-%d')}.json"),
    )
    args = ap.parse_args()
    lrs = [float(v) for v in args.lrs.split(",")]
    images, labels = load_mnist("train")
    cfg = STNPaperConfig(epochs=args.epochs, rts_half=False)  # the pilot predates the halving
    found: dict[str, dict[str, dict[str, list[float]]]] = {}
    for kind in args.distortions.split(","):
        data = distort(images, labels, kind, seed=0, split="train")  # the study's train set
        pool = Pool(data.images, data.labels)
        n_train = len(data) - VALIDATION
        for model in MODELS:
            fit = torch.arange(n_train)
            group = members(cfg, kind, model, [(0, lr, 1.0) for lr in lrs], fit)
            t0 = time.perf_counter()
            res = train_model(
                cfg,
                kind,
                model,
                group,
                pool,
                {"test": torch.arange(n_train, len(pool.y))},
                device=torch.device("cpu"),
                checkpoint=None,
                progress=None,
            )
            curves = {
                f"{lr:g}": [1 - r["test_acc"] for r in res.rows(i)] for i, lr in enumerate(lrs)
            }
            found.setdefault(kind, {})[model] = curves
            print(
                kind,
                model,
                f"{time.perf_counter() - t0:.0f} s",
                {lr: f"{100 * c[-1]:.2f} %" for lr, c in curves.items()},
                flush=True,
            )
    mean = {
        f"{lr:g}": sum(found[k][m][f"{lr:g}"][-1] for k in found for m in found[k])
        / sum(len(found[k]) for k in found)
        for lr in lrs
    }
    best = min(mean, key=mean.get)
    print(
        "mean final validation error per lr:",
        {k: f"{100 * v:.2f} %" for k, v in mean.items()},
        "→ lowest:",
        best,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "validation": f"last {VALIDATION} of the distorted training images",
                "schedule": repr(cfg.plan.schedule(cfg.epochs_run)),
                "final_validation_error": found,
                "mean_final": mean,
                "lowest": best,
                "machine": __import__("platform").processor() or "cpu",
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
