"""Does a slower localisation network keep the RTS transformer alive? (validation split only)

In the stn-paper full run (2026-12-04) every seed's RTS localisation network died: its hidden
ReLUs stopped firing and θ became one fixed warp. This trains the ST-CNN on the first 50k
distorted RTS training images with the cpu budget, the localisation network's SGD steps scaled
by each factor given (``StackedPaperNet.lr_scale``), scores the last 10k after every epoch, and
reports per factor and seed: validation error, the largest spread of a θ component over the
validation images (< 0.01: a fixed warp) and the hidden units still active.

    python benchmarks/stn_paper_locscale.py --scales 1,0.1 --seeds 2 [--distortion RTS]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mnistlab.data import load_mnist
from mnistlab.data.distort import SIZES, distort
from mnistlab.models.paper_stn import PaperNet
from mnistlab.models.stn import to_input
from mnistlab.studies.stn.paper import BUDGETS, STNPaperConfig, members, train_model
from mnistlab.train.engine import Pool
from mnistlab.train.evaluate import solo

VALIDATION = 10_000


def _liveness(state: dict, kind: str, images: torch.Tensor) -> tuple[float, int]:
    net = solo(PaperNet(True, SIZES[kind]), state).eval()
    with torch.no_grad():
        x = to_input(images)
        theta = net.theta(x).reshape(-1, 6)
        hidden = torch.relu(net.fc_loc[0](net.localization(net.normalise(x)).flatten(1)))
    return float(theta.std(0).max()), int((hidden > 0).any(0).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distortion", default="RTS")
    ap.add_argument("--scales", default="1,0.1")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(f"docs/benchmarks/stn_paper_locscale_{time.strftime('%Y-%m-%d')}.json"),
    )
    args = ap.parse_args()
    kind, plan = args.distortion, BUDGETS["cpu"]
    images, labels = load_mnist("train")
    data = distort(images, labels, kind, seed=0, split="train")  # the study's train set
    pool, n_train = Pool(data.images, data.labels), len(data) - VALIDATION
    found = {}
    for scale in (float(v) for v in args.scales.split(",")):
        t0 = time.perf_counter()
        cfg = STNPaperConfig(rts_half=False)  # as measured, before the study halved RTS
        recipes = [(s, plan.lr, scale) for s in range(args.seeds)]
        res = train_model(
            cfg,
            kind,
            "st-cnn",
            members(cfg, kind, "st-cnn", recipes, torch.arange(n_train)),
            pool,
            {"test": torch.arange(n_train, len(pool.y))},
            device=torch.device("cpu"),
            checkpoint=None,
            progress=None,
        )
        rows = []
        for i, state in enumerate(res.states):
            spread, alive = _liveness(state, kind, data.images[n_train:])
            errors = [1 - r["test_acc"] for r in res.rows(i)]
            rows.append({"val_error_by_epoch": errors, "theta_sd": spread, "alive_hidden": alive})
            print(
                f"{kind} loc×{scale:g} seed {i}: val error {100 * errors[-1]:.2f} %, "
                f"θ spread {spread:.2e}, {alive}/50 hidden alive",
                flush=True,
            )
        found[f"{scale:g}"] = {"seeds": rows, "seconds": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "distortion": kind,
                "validation": f"last {VALIDATION} of the distorted training images",
                "schedule": repr(plan.schedule()),
                "by_scale": found,
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
