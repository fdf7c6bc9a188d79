"""Pilot for issue 33 (digits-best): which source-training recipe gives 0–4 features that
transfer best to 5–9 — scored on 5–9 *validation* accuracy only (no test image is touched).

Every source recipe is trained once per transfer seed (seed s: init, batch order, dropout and
augmentation streams) on 90 % of the 0–4 training images with early stopping on the other
10 % (patience 3, best weights restored). Then, per source and seed, a new head on the first
5 (frozen5) or 4 (reuse4) hidden layers: Adam lr 1e-2, batch 50, early stopping on the 5–9
validation loss (patience 20) — the as-specified transfer rule — on the seed's 100 images per
digit, scored on its 200 validation images per digit.

    python benchmarks/digits_source_pilot.py --seeds 3 --out docs/benchmarks/x.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp
from mnistlab.progress import default as default_progress
from mnistlab.studies.digits import tune
from mnistlab.studies.digits.common import (
    CellContext,
    DigitsConfig,
    load_digits,
    source_split,
    to_flat,
)
from mnistlab.studies.digits.transfer import Reused, transfer_schedule, transfer_split
from mnistlab.train.engine import Member, Pool, Schedule, train_stack
from mnistlab.train.evaluate import solo


def recipes(args) -> list[dict]:
    out = []
    for l2, drop, aug in itertools.product(args.l2s, args.dropouts, args.augments):
        out.append({"lr": 1e-3, "batch_size": 128, "l2": l2, "dropout": drop, "augment": aug})
    return out


def train_sources(ctx: CellContext, hps: list[dict], seeds: list[int]) -> tuple[list, list]:
    """Every recipe × seed as one stack, early stopping on the source validation split."""
    cfg = ctx.cfg
    tr, va = source_split(ctx)
    members, shapes = [], set()
    for i, hp in enumerate(hps):
        mcfg, t, _ = tune.recipe(cfg, hp)
        shapes.add(replace(mcfg, dropout=0.0))
        for seed in seeds:
            members.append(
                replace(
                    t,
                    seed=seed,
                    state=build_mlp(mcfg, seed=seed).state_dict(),
                    train=tr,
                    evals={"val": va},
                    meta={"recipe": i, "seed": seed},
                )
            )
    (shape,) = shapes
    res = train_stack(
        StackedMLP(shape),
        members,
        Pool(ctx.source.x_train, ctx.source.y_train),
        Schedule(epochs=40, batch_size=128, patience=3, restore_best=True),
        trainable={n for n, _ in MLP(shape).named_parameters()},
        device=ctx.device,
        prepare=to_flat,
        progress=ctx.progress,
        description=f"pilot: {len(members)} sources",
    )
    models = [solo(MLP(shape), s) for s in res.states]
    rows = [
        {
            "recipe": m.meta["recipe"],
            "seed": m.meta["seed"],
            "best_epoch": res.best_epoch[k],
            "source_val_acc": res.rows(k)[res.best_epoch[k] - 1]["val_acc"],
        }
        for k, m in enumerate(members)
    ]
    return models, rows


def transfer_val(ctx, target, models, rows, n: int, seeds_lr: float) -> list[float]:
    """Per source model: the 5–9 validation accuracy of a new head on its first n layers."""
    cfg = ctx.cfg
    members = []
    for k, (model, row) in enumerate(zip(models, rows, strict=True)):
        tr, va = transfer_split(cfg, target, row["seed"])
        members.append(
            Member(
                seed=row["seed"],
                state=Reused(model, n, 5, row["seed"]).state_dict(),
                train=tr,
                lr=seeds_lr,
                evals={"val": va},
                meta={"k": k},
            )
        )
    shape = MLPConfig(hidden=(100,) * n, n_classes=5)
    res = train_stack(
        StackedMLP(shape, "stack", 0),
        members,
        Pool(target.x_train, target.y_train),
        transfer_schedule(cfg),
        trainable={"head.weight", "head.bias"},
        device=ctx.device,
        prepare=to_flat,
        progress=ctx.progress,
        description=f"pilot: heads on {n} layers × {len(members)}",
    )
    return [res.rows(k)[res.best_epoch[k] - 1]["val_acc"] for k in range(len(members))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--l2s", type=float, nargs="+", default=[1e-7, 1e-5, 1e-4])
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.2])
    p.add_argument("--augments", nargs="+", default=["none", "shift2-rot10"])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = DigitsConfig()
    ctx = CellContext(cfg, None, torch.device("cpu"), default_progress(), None, lambda n: {})
    target = load_digits(cfg.target_digits)
    seeds = [cfg.seed + s for s in range(args.seeds)]
    hps = recipes(args)
    t0 = time.perf_counter()
    models, rows = train_sources(ctx, hps, seeds)
    t_source = time.perf_counter() - t0
    for n, name in ((5, "frozen5"), (4, "reuse4")):
        for row, acc in zip(rows, transfer_val(ctx, target, models, rows, n, 1e-2), strict=True):
            row[name] = acc
    summary = []
    for i, hp in enumerate(hps):
        mine = [r for r in rows if r["recipe"] == i]
        mean = {k: sum(r[k] for r in mine) / len(mine) for k in ("frozen5", "reuse4")}
        summary.append({"hp": hp, **mean, "epochs": [r["best_epoch"] for r in mine]})
        print(
            f"{hp}  frozen5 {mean['frozen5']:.4f}  reuse4 {mean['reuse4']:.4f}  "
            f"epochs {[r['best_epoch'] for r in mine]}"
        )
    Path(args.out).write_text(
        json.dumps(
            {
                "what": __doc__.split("\n\n")[0],
                "cpu": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "source_seconds": t_source,
                "total_seconds": time.perf_counter() - t0,
                "summary": summary,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
