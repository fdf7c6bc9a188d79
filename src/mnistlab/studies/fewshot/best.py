"""Study: the best honest few-shot head — every choice on validation, one score on test.

The question asks for the highest test accuracy with exactly n images per class, a frozen
ImageNet backbone and a new output layer. This protocol searches, per seed and size, over
what the head sees and how it is fitted, choosing on the same validation split as the
as-specified honest protocol (20 images per class from the remaining training images), then
scores the choice once on the full test set:

* feature transforms, fitted on the n×10 training features only: none, standardisation,
  L2 normalisation, both;
* the standard linear probe — multinomial logistic regression fitted by full-batch L-BFGS with
  a regularisation sweep (λ = 1/(C·N)) — against the as-specified mini-batch Adam head (lr
  and epoch chosen on validation).

* what the head is fitted on: the n×10 images' features alone, or with 1 or ``views`` augmented
  views of each image at a mild or a strong warp (``views.py``), for the sizes up to
  ``views_up_to`` per class — the backbone stays frozen and only the head is trained, as the
  question asks; validation and test images are never warped.

The same cached features as the as-specified study (same preprocessing to 224×224, same
images), plus the views' (cached the same way). An ablation removes each chosen ingredient
once (views → none, transform → none, sweep → C = 1, the probe → Adam) and reports the test
accuracy lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mnistlab import runs, schemas
from mnistlab.config import option
from mnistlab.errors import MnistlabError
from mnistlab.models.backbones import new_linear, resolve_weights
from mnistlab.progress import Progress
from mnistlab.stats import mean_ci
from mnistlab.studies.fewshot.common import FewshotConfig
from mnistlab.studies.fewshot.pool import FeaturePool, Heads, feature_pool
from mnistlab.studies.fewshot.study import best_of, run_backbones, size_rows
from mnistlab.studies.fewshot.views import STRENGTHS, Option, Views, options
from mnistlab.studies.fewshot.views import extract as extract_views
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.train.devices import pick_device
from mnistlab.train.engine import Member, Pool
from mnistlab.train.probes import fit_probes, probe_scores

STUDY = "fewshot-best"
TRANSFORMS = ("none", "standardize", "l2", "l2+standardize")


@dataclass(frozen=True)
class FewshotBestConfig(FewshotConfig):
    """The as-specified study's data and heads, plus the search."""

    transforms: tuple[str, ...] = option(
        TRANSFORMS, "feature transforms searched", cli="", choices=TRANSFORMS
    )
    c_grid: tuple[float, ...] = option(
        (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
        "inverse regularisation strengths",
        cli="",
        lo=0,
        hi=1e6,
        open_lo=True,
    )
    lbfgs_iters: int = option(300, "L-BFGS iterations per fit", cli="", lo=1, hi=100_000)
    views: int = option(
        3, "augmented views per training image the search may add (0: none)", cli="", lo=0, hi=32
    )
    view_strengths: tuple[str, ...] = option(
        ("mild", "strong"), "view strengths searched", cli="", choices=tuple(STRENGTHS)
    )
    views_up_to: int = option(
        30,
        "views only for sizes up to N per class (each view costs an extraction)",
        cli="",
        lo=0,
        hi=10**6,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cache:
            raise MnistlabError("the best protocol works on cached features")


class Transform:
    """A feature transform with statistics fitted on each seed's training features only."""

    def __init__(self, name: str, train: torch.Tensor):  # train: [S, N, D]
        self.l2, self.std = "l2" in name, "standardize" in name
        t = self._base(train)
        self.mu = t.mean(1, keepdim=True) if self.std else None
        if self.std:
            sd = t.std(1, keepdim=True)
            self.sd = torch.where(sd > 1e-6 * sd.mean(), sd, torch.ones_like(sd))  # constants

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) if self.l2 else x

    def __call__(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """``x`` [S, M, D] with every seed's statistics, or [M, D] with seed ``k``'s."""
        x = self._base(x)
        if not self.std:
            return x
        mu, sd = (self.mu, self.sd) if k is None else (self.mu[k], self.sd[k])
        return (x - mu) / sd


def _probe_grid(fp: FeaturePool, views: Views, n: int, option: Option, cfg) -> dict[str, Any]:
    """Every transform × C for every seed at size ``n``, fitted on the images' features and
    ``option``'s views of them: validation and test scores (arrays [S, len(C)])."""
    pool, test_x = fp.features
    row_of, seeds = fp.heads.row_of, list(fp.splits)
    trains, labels = [], []
    for sp in fp.splits.values():
        idx = sp["sizes"][n]
        trains.append(torch.cat([pool[row_of[idx]], *views.of(idx, option)]))
        labels.append(fp.y_train[idx].repeat(1 + option.count))
    tr, ytr = torch.stack(trains), torch.stack(labels)
    va = torch.stack([row_of[fp.splits[s]["val"]] for s in seeds])
    yva = torch.stack([fp.y_train[fp.splits[s]["val"]] for s in seeds])
    out = {}
    for name in cfg.transforms:
        f = Transform(name, tr)
        w, b = fit_probes(f(tr), ytr, cfg.c_grid, cfg.lbfgs_iters)
        scores = {"val_acc": [], "val_ll": [], "test_acc": []}
        for k in range(len(seeds)):
            acc, ll = probe_scores(w[k], b[k], f(pool[va[k]], k), yva[k])
            scores["val_acc"].append(acc)
            scores["val_ll"].append(ll)
            scores["test_acc"].append(probe_scores(w[k], b[k], f(test_x, k), fp.y_test)[0])
        out[name] = {key: torch.stack(v) for key, v in scores.items()}
    return out


def _view_heads(
    fp: FeaturePool, viewed, n: int, opts: list[Option], cfg, out: Path, progress, name: str
) -> dict:
    """The Adam heads of every view option at size ``n`` (the images' rows plus their views'
    rows, ``viewed`` = :func:`_with_views`), one stack; per option and seed the lr and epoch
    chosen on validation, with that head's test accuracy."""
    heads, blocks = viewed
    members = [
        Member(
            seed=seed,
            state=new_linear(heads.width, 10, seed).state_dict(),
            train=torch.cat([heads.row_of[sp["sizes"][n]], *blocks(sp["sizes"][n], o)]),
            lr=lr,
            evals={"val": heads.row_of[sp["val"]]},
            meta={"seed": seed, "lr": lr, "option": o.label},
            shared=frozenset(),
        )
        for o in opts
        for seed, sp in fp.splits.items()
        for lr in cfg.lr_grid
    ]
    result = heads.train(
        members,
        cfg,
        out / "checkpoints" / f"size{n}-views.pt",
        progress,
        f"{name} heads with views, {n}/class",
    )
    test = heads.chosen_test_acc(result)
    per_lr: dict[tuple[str, int], list[dict]] = {}
    for k, m in enumerate(members):
        best = best_of(result.rows(k), "val_acc")
        row = {"val_acc": best["val_acc"], "test_acc": test[k], "lr": m.lr, "epoch": best["epoch"]}
        per_lr.setdefault((m.meta["option"], m.seed), []).append(row)
    # as size_rows chooses: the best validation accuracy, the earlier epoch, the first lr
    return {
        key: max(rows, key=lambda r: (r["val_acc"], -r["epoch"])) for key, rows in per_lr.items()
    }


def _with_views(fp: FeaturePool, views: Views) -> tuple[Heads, Any]:
    """The heads' pool with every view's features appended, and where an option's views of
    given training images sit in it."""
    base = len(fp.heads.pool.x)
    order = list(views.feats)
    x = torch.cat([fp.heads.pool.x, *(views.feats[k] for k in order)])
    y = torch.cat([fp.heads.pool.y, *(fp.y_train[views.rows] for _ in order)])
    heads = replace(fp.heads, pool=Pool(x, y))

    def blocks(idx: torch.Tensor, option: Option) -> list[torch.Tensor]:
        pos = views.positions(idx)
        return [base + order.index(key) * len(views.rows) + pos for key in views.keys(option)]

    return heads, blocks


def _choose(grid: dict, adam: dict, k: int, c_grid) -> dict[str, Any]:
    """Seed ``k``'s choice on validation: the probe with the best (accuracy, log-likelihood),
    or the Adam head when its validation accuracy is higher."""
    best = max(
        ((t, ci) for t in grid for ci in range(len(c_grid))),
        key=lambda tc: (
            float(grid[tc[0]]["val_acc"][k, tc[1]]),
            float(grid[tc[0]]["val_ll"][k, tc[1]]),
        ),
    )
    t, ci = best
    probe = {
        "classifier": "lbfgs",
        "transform": t,
        "C": c_grid[ci],
        "val_acc": float(grid[t]["val_acc"][k, ci]),
        "test_acc": float(grid[t]["test_acc"][k, ci]),
    }
    return probe if probe["val_acc"] >= adam["val_acc"] else {**adam, "classifier": "adam"}


def _best_c(grid: dict, t: str, k: int, c_grid) -> int:
    return max(
        range(len(c_grid)),
        key=lambda ci: (float(grid[t]["val_acc"][k, ci]), float(grid[t]["val_ll"][k, ci])),
    )


def _ablations(grid: dict, chosen: dict, adam: dict, k: int, c_grid) -> dict[str, float]:
    """Test accuracy with one chosen ingredient removed (the rest re-chosen on validation)."""
    out = {"classifier → Adam": adam["test_acc"]}
    if chosen["classifier"] == "lbfgs":
        if chosen["transform"] != "none" and "none" in grid:
            out["transform → none"] = float(
                grid["none"]["test_acc"][k, _best_c(grid, "none", k, c_grid)]
            )
        if 1.0 in c_grid:
            out["C sweep → C = 1"] = float(
                grid[chosen["transform"]]["test_acc"][k, c_grid.index(1.0)]
            )
    return out


def run_backbone(
    name: str, cfg: FewshotBestConfig, out: Path, progress: Progress, data_dir=None
) -> dict:
    device = pick_device(cfg.device)
    weights = resolve_weights(
        name,
        dict(cfg.weights).get(name) or dict(cfg.weights).get("*"),
        seed=cfg.seed,
        progress=progress,
    )
    t0 = time.perf_counter()
    fp = feature_pool(name, cfg, weights, device, progress, data_dir)
    views = extract_views(fp, name, cfg, progress, data_dir)
    viewed = _with_views(fp, views) if views.feats else None  # one copy of the pool, all sizes
    rows = []
    task = progress.task(f"fewshot-best: {name} search", len(cfg.sizes))
    for n in cfg.sizes:
        rows += _size(fp, views, viewed, n, cfg, out, progress, name)
        task.advance(1)
    task.done()
    return {
        "backbone": name,
        "weights_source": weights.source,
        "random_weights": weights.is_random,
        "rows": rows,
        "table": summarise(rows, cfg.sizes),
        "views": {
            "images": len(views.rows) * len(views.feats),
            "extract_seconds": views.seconds,
            "up_to": cfg.views_up_to,
            "strengths": {s: STRENGTHS[s].label() for s in cfg.view_strengths},
        },
        "seconds": time.perf_counter() - t0,
    }


def _size(fp: FeaturePool, views: Views, viewed, n: int, cfg, out: Path, progress, name: str):
    """Every seed's search at ``n`` per class: per view option the probes and the Adam heads,
    the best on validation across options (ties to the cheaper option), and the ablations."""
    viewable = viewed is not None and n <= cfg.views_up_to
    opts = options(cfg.view_strengths, cfg.views) if viewable else [Option()]
    members, result, chosen_test = fp.heads.train_size(
        n, fp.splits, cfg, out / "adam", progress, name
    )
    plain = {r["seed"]: r for r in size_rows(n, result, members, cfg, chosen_test)}
    adam = {
        (Option().label, seed): {
            "val_acc": r["val_acc"],
            "test_acc": r["val_test_acc"],
            "lr": r["val_lr"],
            "epoch": r["val_epoch"],
        }
        for seed, r in plain.items()
    }
    if len(opts) > 1:
        adam |= _view_heads(fp, viewed, n, opts[1:], cfg, out / "adam", progress, name)
    grids = {o.label: _probe_grid(fp, views, n, o, cfg) for o in opts}
    rows = []
    for k, seed in enumerate(fp.splits):
        picks = [(o, _choose(grids[o.label], adam[(o.label, seed)], k, cfg.c_grid)) for o in opts]
        option, chosen = max(picks, key=lambda p: p[1]["val_acc"])  # the first (cheapest) on ties
        ablation = _ablations(
            grids[option.label], chosen, adam[(option.label, seed)], k, cfg.c_grid
        )
        if option.count:
            ablation["views → none"] = picks[0][1]["test_acc"]
        rows.append(
            {
                "seed": seed,
                "size": n,
                "chosen": {**chosen, "views": option.label},
                "adam": adam[(Option().label, seed)],
                "ablation": ablation,
            }
        )
    return rows


def summarise(rows: list[dict], sizes) -> list[dict]:
    """Per size: the best protocol's test accuracy (mean ± 95 % CI), what was chosen, and the
    mean test accuracy lost by each ablation."""
    table = []
    for n in sizes:
        sel = [r for r in rows if r["size"] == n]
        picks: dict[str, int] = {}
        for r in sel:
            c = r["chosen"]
            key = (
                f"L-BFGS probe, {c['transform']}, C={c['C']:g}"
                if c["classifier"] == "lbfgs"
                else f"Adam head, lr {c['lr']:g}"
            ) + (f", {c['views']}" if c.get("views", "no views") != "no views" else "")
            picks[key] = picks.get(key, 0) + 1
        drops = {}
        for name in {a for r in sel for a in r["ablation"]}:
            pairs = [
                (r["chosen"]["test_acc"], r["ablation"][name]) for r in sel if name in r["ablation"]
            ]
            drops[name] = mean_ci([c - a for c, a in pairs])
        table.append(
            {
                "size": n,
                "seeds": len(sel),
                "test_acc": mean_ci([r["chosen"]["test_acc"] for r in sel]),
                "adam_test_acc": mean_ci([r["adam"]["test_acc"] for r in sel]),
                "per_seed_test_acc": [r["chosen"]["test_acc"] for r in sel],
                "per_seed_adam_test_acc": [r["adam"]["test_acc"] for r in sel],
                "chosen": picks,
                "ablation_drop": drops,
            }
        )
    return table


def run(
    config: FewshotBestConfig,
    out_dir: Path | str,
    env: Env | None = None,
    *,
    skip_missing: bool = False,
) -> schemas.FewshotBestMetrics:
    """Search and score every backbone (one cell each); results to ``out_dir``."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_, skip_missing))


def _compute(config, run_: StudyRun, skip_missing: bool) -> dict:
    """The study's work inside its opened run folder; returns its metrics."""
    results, skipped = run_backbones(run_backbone, config, run_, skip_missing)
    runs.write_json(run_.out / "search.json", {"backbones": results})
    return {
        "backbones": {n: {k: v for k, v in r.items() if k != "rows"} for n, r in results.items()},
        "skipped": skipped,
    }
