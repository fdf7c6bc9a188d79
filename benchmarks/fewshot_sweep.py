"""Head-training sweep behind the few-shot defaults (optimizer, lr, epochs), on cached features.

    python benchmarks/fewshot_sweep.py [--backbone resnet50] [--seeds 2] [--test-limit 2000]
Prints, per optimizer/lr and size, the best test accuracy, its epoch and the final accuracy.
Every learning rate of one optimizer and seed trains as one stack of the engine.
"""

from __future__ import annotations

import argparse

import torch

from mnistlab.data import load_mnist
from mnistlab.models.backbones import (
    build_model,
    get_backbone,
    head_of,
    new_linear,
    resolve_weights,
)
from mnistlab.models.stack import StackedLinear
from mnistlab.progress import Progress
from mnistlab.runs import write_json
from mnistlab.studies.fewshot.common import FewshotConfig, seed_splits
from mnistlab.studies.fewshot.pool import features
from mnistlab.train.engine import Member, Pool, Schedule, train_stack
from mnistlab.train.features import FrozenFeatures, resolve_precision

GRID = {"adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), "sgd": (1e-2, 1e-1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("-o", "--output", default="results/benchmarks/fewshot_sweep.json")
    args = parser.parse_args()
    cfg = FewshotConfig(backbones=(args.backbone,), seeds=args.seeds, test_limit=args.test_limit)
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    xt, yt = xt[: args.test_limit], yt[: args.test_limit]
    w = resolve_weights(args.backbone)
    model = build_model(args.backbone, w)
    splits = seed_splits(y, cfg)
    pool_idx = torch.unique(
        torch.cat([torch.cat([s["val"], *s["sizes"].values()]) for s in splits.values()])
    )
    cpu = torch.device("cpu")
    frozen = FrozenFeatures(
        model, get_backbone(args.backbone).head, cpu, resolve_precision("auto", cpu)
    )
    p = Progress()
    pf = features(args.backbone, w.digest, frozen, x[pool_idx], "pool", 32, p)
    tf = features(args.backbone, w.digest, frozen, xt, "test", 32, p)
    pool = Pool(torch.cat([pf, tf]), torch.cat([y[pool_idx], yt]))
    row = torch.full((len(y),), -1, dtype=torch.long)
    row[pool_idx] = torch.arange(len(pool_idx))
    test = torch.arange(len(pool_idx), len(pool.y))
    width = head_of(model, args.backbone).in_features
    results = []
    for opt, lrs in GRID.items():
        for seed, sp in splits.items():
            for n in cfg.sizes:
                members = [
                    Member(
                        seed=seed,
                        state=new_linear(width, 10, seed).state_dict(),
                        train=row[sp["sizes"][n]],
                        lr=lr,
                        meta={"lr": lr},
                    )
                    for lr in lrs
                ]
                res = train_stack(
                    StackedLinear(),
                    members,
                    pool,
                    Schedule(
                        epochs=args.epochs,
                        batch_size=32,
                        optimizer=opt,
                        momentum=0.9 if opt == "sgd" else 0.0,
                    ),
                    trainable={"weight", "bias"},
                    device=cpu,
                    shared_evals={"test": test},
                )
                for k, lr in enumerate(lrs):
                    accs = [r["test_acc"] for r in res.rows(k)]
                    best = max(range(len(accs)), key=lambda i: accs[i])
                    r = {
                        "opt": opt,
                        "lr": lr,
                        "seed": seed,
                        "size": n,
                        "best_acc": accs[best],
                        "best_epoch": best + 1,
                        "acc_at_60": accs[min(59, len(accs) - 1)],
                        "final_acc": accs[-1],
                    }
                    results.append(r)
                    print(r)
    write_json(args.output, {"rows": results})


if __name__ == "__main__":
    main()
