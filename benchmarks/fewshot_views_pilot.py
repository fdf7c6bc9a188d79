"""Pilot for issue 33, validation only: do augmented views of the few training images, passed
through the frozen ResNet-50, help the linear head? The test set is not read.

    python benchmarks/fewshot_views_pilot.py [--seeds 3] [--sizes 10,30] [--views 4] [-o OUT]

Per seed and size: the L-BFGS probe (standardised features, the best-validation C of the
grid) and the Adam head (lr 3e-3, its best-validation epoch), each fitted on the plain features
alone and on the plain features plus V augmented views per image, at two strengths; scored on
the seed's 20-per-class validation split (plain images). Views are cached like every feature.
"""

from __future__ import annotations

import argparse
import time

import torch

from mnistlab.data import load_mnist
from mnistlab.models.backbones import build_model, get_backbone, resolve_weights
from mnistlab.progress import Progress
from mnistlab.runs import environment, write_json
from mnistlab.stats import mean_ci
from mnistlab.studies.fewshot.best import FewshotBestConfig, Transform
from mnistlab.studies.fewshot.pool import feature_pool, features
from mnistlab.train.augment import Augment, augment_batch
from mnistlab.train.features import FrozenFeatures, resolve_backend, resolve_precision
from mnistlab.train.probes import fit_probes, probe_scores

STRENGTHS = {
    "mild": Augment(shift=2.0, rotate=10.0, scale=0.1),
    "strong": Augment(shift=3.0, rotate=20.0, scale=0.2),
}
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def views_of(images: torch.Tensor, spec: Augment, seed: int, v: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1_000_003 * seed + 7919 * v + 17)
    return augment_batch(images[None], [spec], [g], [len(images)])[0]


def probe_val(xtr, ytr, xva, yva) -> float:
    t = Transform("standardize", xtr[None])
    w, b = fit_probes(t(xtr[None]), ytr[None], C_GRID, 300)
    return max(probe_scores(w[0], b[0], t(xva, 0), yva)[0][ci].item() for ci in range(len(C_GRID)))


def adam_val(xtr, ytr, xva, yva, seed: int, epochs: int = 100) -> float:
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(xtr.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    best = 0.0
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=g).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(xtr[idx]), ytr[idx]).backward()
            opt.step()
        with torch.no_grad():
            best = max(best, (head(xva).argmax(1) == yva).float().mean().item())
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sizes", default="10,30")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("-o", "--output", default="results/benchmarks/fewshot_views_pilot.json")
    a = ap.parse_args()
    sizes = tuple(int(s) for s in a.sizes.split(","))
    cfg = FewshotBestConfig(backbones=("resnet50",), sizes=sizes, seeds=a.seeds, test_limit=10)
    progress, cpu = Progress(), torch.device("cpu")
    weights = resolve_weights("resnet50", None, seed=0, progress=progress)
    fp = feature_pool("resnet50", cfg, weights, cpu, progress)
    precision = resolve_precision(cfg.precision, cpu)
    frozen = FrozenFeatures(
        build_model("resnet50", weights, num_classes=10, seed=0),
        get_backbone("resnet50").head,
        cpu,
        precision,
        cfg.image_size,
        resolve_backend(cfg.backend, precision, cpu),
    )
    x_train, y_train = load_mnist("train")
    pool_x, _ = fp.features
    rows, seconds = [], 0.0
    for seed, sp in fp.splits.items():
        big = sp["sizes"][max(sizes)]
        t0 = time.perf_counter()
        view_feats = {
            (s, v): features(
                "resnet50",
                weights.digest,
                frozen,
                views_of(x_train[big], spec, seed, v),
                f"views {s} {v} seed {seed}",
                cfg.extract_batch,
                progress,
            )
            for s, spec in STRENGTHS.items()
            for v in range(a.views)
        }
        seconds += time.perf_counter() - t0
        xva, yva = pool_x[fp.heads.row_of[sp["val"]]], y_train[sp["val"]]
        for n in sizes:
            idx = sp["sizes"][n]
            at = torch.searchsorted(torch.sort(big).values, idx)
            order = torch.argsort(big)
            pos = order[at]  # where each of idx sits in big
            xtr, ytr = pool_x[fp.heads.row_of[idx]], y_train[idx]
            row = {"seed": seed, "size": n}
            for name, fit in (("probe", probe_val), ("adam", None)):
                for s in (None, *STRENGTHS):
                    extra = [] if s is None else [view_feats[(s, v)][pos] for v in range(a.views)]
                    x = torch.cat([xtr, *extra])
                    y = ytr.repeat(1 + len(extra))
                    key = f"{name} {s or 'plain'}"
                    row[key] = fit(x, y, xva, yva) if fit else adam_val(x, y, xva, yva, seed)
            rows.append(row)
            print(row, flush=True)
    summary = {}
    for n in sizes:
        sel = [r for r in rows if r["size"] == n]
        summary[n] = {k: mean_ci([r[k] for r in sel]) for k in sel[0] if k not in ("seed", "size")}
    print(summary)
    write_json(
        a.output,
        {
            "what": "validation accuracy (20 per class), views through the frozen ResNet-50",
            "strengths": {k: v.label() for k, v in STRENGTHS.items()},
            "views": a.views,
            "extract_seconds": seconds,
            "rows": rows,
            "summary": summary,
            "environment": environment(),
        },
    )


if __name__ == "__main__":
    main()
