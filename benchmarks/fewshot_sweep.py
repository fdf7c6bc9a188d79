"""Head-training sweep behind the few-shot defaults (optimizer, lr, epochs), on cached features.

    python benchmarks/fewshot_sweep.py [--backbone resnet50] [--seeds 2] [--test-limit 2000]
Prints, per optimizer/lr and size, the best test accuracy, its epoch and the final accuracy.
"""

from __future__ import annotations

import argparse
import time

import torch

from mnistlab.data import load_mnist
from mnistlab.models.backbones import build_model, head_of, new_linear, resolve_weights
from mnistlab.progress import Progress
from mnistlab.runs import atomic_write_json
from mnistlab.studies.fewshot import FewshotConfig, _features, seed_splits
from mnistlab.train.features import FrozenFeatures
from mnistlab.train.loop import evaluate, train_epoch


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
    pool = torch.unique(
        torch.cat([torch.cat([s["val"], *s["sizes"].values()]) for s in splits.values()])
    )
    frozen = FrozenFeatures(model, model.head_path, torch.device("cpu"), "bf16")
    p = Progress()
    pf = _features(args.backbone, w.digest, frozen, x[pool], "pool", 64, p)
    tf = _features(args.backbone, w.digest, frozen, xt, "test", 64, p)
    row = torch.full((len(y),), -1, dtype=torch.long)
    row[pool] = torch.arange(len(pool))
    results = []
    for opt_name, lrs in (("adam", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)), ("sgd", (1e-2, 1e-1))):
        for lr in lrs:
            for seed, sp in splits.items():
                for n in cfg.sizes:
                    idx = sp["sizes"][n]
                    head = new_linear(head_of(model).in_features, 10, seed)
                    opt = (
                        torch.optim.Adam(head.parameters(), lr=lr)
                        if opt_name == "adam"
                        else torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
                    )
                    g = torch.Generator().manual_seed(seed)
                    accs = []
                    t = time.perf_counter()
                    for _ in range(args.epochs):
                        train_epoch(head, pf[row[idx]], y[idx], opt, batch_size=32, generator=g)
                        accs.append(evaluate(head, tf, yt).acc)
                    best = max(range(len(accs)), key=lambda i: accs[i])
                    r = {
                        "opt": opt_name,
                        "lr": lr,
                        "seed": seed,
                        "size": n,
                        "best_acc": accs[best],
                        "best_epoch": best + 1,
                        "acc_at_60": accs[59],
                        "final_acc": accs[-1],
                        "seconds": time.perf_counter() - t,
                    }
                    results.append(r)
                    print(r)
    atomic_write_json(args.output, results)


if __name__ == "__main__":
    main()
