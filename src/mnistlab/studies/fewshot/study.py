"""Study: few-shot ImageNet transfer — a new 10-way layer on frozen ResNet-50 / VGG-19.

Per backbone, seed and size (images per class), a fresh output layer is trained with
cross-entropy while everything else stays frozen (and in eval mode). Test accuracy after every
epoch gives the study's metric — the best test accuracy and the epoch it came at — and, because
choosing the epoch on the test set flatters the result, the honest protocol beside it: learning
rate and epoch chosen on a validation split drawn from the remaining training images, and the
test accuracy at that choice.

The backbone's penultimate features are computed once per (backbone, weights digest,
preprocessing, precision, image set) and cached on disk; ``cache=False`` re-runs the backbone
on every batch of every epoch instead (the transfer-learning tutorial's way), for comparison.
All heads of one size — every seed × learning rate — train together as one stack of the engine.
"""

from __future__ import annotations

import time
from pathlib import Path

from mnistlab import runs, schemas
from mnistlab.errors import MnistlabError
from mnistlab.executors import Cell
from mnistlab.models.backbones import (
    resolve_weights,
)
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.stats import mean_ci
from mnistlab.studies.fewshot.common import FewshotConfig
from mnistlab.studies.fewshot.pool import feature_pool
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.train.devices import pick_device
from mnistlab.train.engine import Member

STUDY = "fewshot"
# On a plateau the single best epoch is mostly noise; the first epoch within half a point of it
# says when training was effectively done.
NEAR_BEST = 0.005


def best_of(history: list[dict], key: str) -> dict:
    """The first epoch with the highest ``key`` (ties go to the earlier epoch)."""
    return max(history, key=lambda r: (r[key], -r["epoch"]))


def size_rows(
    n: int, result, members: list[Member], cfg: FewshotConfig, chosen_test: list[float] | None
) -> list[dict]:
    """Per seed at size ``n``: the as-specified numbers (lr ``cfg.lr``, best test epoch) and
    the honest ones (lr and epoch chosen on validation)."""
    per_member = {(m.meta["seed"], m.meta["lr"]): result.rows(k) for k, m in enumerate(members)}
    index = {(m.meta["seed"], m.meta["lr"]): k for k, m in enumerate(members)}
    rows = []
    for seed in sorted({m.meta["seed"] for m in members}):
        main = per_member[(seed, cfg.lr)]
        best = best_of(main, "test_acc")
        chosen_lr, chosen = max(
            ((lr, best_of(h, "val_acc")) for (s, lr), h in per_member.items() if s == seed),
            key=lambda p: (p[1]["val_acc"], -p[1]["epoch"]),
        )
        k = index[(seed, chosen_lr)]
        val_test = chosen_test[k] if chosen_test is not None else chosen["test_acc"]
        rows.append(
            {
                "seed": seed,
                "size": n,
                "best_test_acc": best["test_acc"],
                "best_epoch": best["epoch"],
                "near_best_epoch": next(
                    r["epoch"] for r in main if r["test_acc"] >= best["test_acc"] - NEAR_BEST
                ),
                "final_test_acc": main[-1]["test_acc"],
                "val_lr": chosen_lr,
                "val_epoch": chosen["epoch"],
                "val_acc": chosen["val_acc"],
                "val_test_acc": val_test,
                # the same epoch choice on validation, at the reported lr: like with like
                "val_epoch_same_lr_test_acc": best_of(main, "val_acc")["test_acc"],
            }
        )
    return rows


def run_backbone(
    name: str, cfg: FewshotConfig, out: Path, progress: Progress, data_dir=None
) -> dict:
    """All seeds and sizes for one backbone; returns its result dict (also written to disk)."""
    device = pick_device(cfg.device)
    spec = dict(cfg.weights).get(name) or dict(cfg.weights).get("*")
    weights = resolve_weights(name, spec, seed=cfg.seed, progress=progress)
    folder = out / f"{name}-{weights.digest.replace(':', '')[:12]}"
    if (folder / "result.json").is_file():
        return runs.read_finished(folder / "result.json")
    t0 = time.perf_counter()
    fp = feature_pool(name, cfg, weights, device, progress, data_dir)
    splits, heads = fp.splits, fp.heads
    rows, curves, heads_seconds = [], [], 0.0
    for n in cfg.sizes:
        members, result, chosen = heads.train_size(n, splits, cfg, folder, progress, name)
        heads_seconds += result.seconds
        rows += size_rows(n, result, members, cfg, chosen)
        curves += [r for r in result.history if r["lr"] == cfg.lr]
    result_dict = {
        "backbone": name,
        "folder": folder.name,
        "weights_source": weights.source,
        "weights_digest": weights.digest,
        "random_weights": weights.is_random,
        "variant": weights.variant,
        "precision": fp.precision,
        "feature_engine": fp.engine,
        "device": str(device),
        "cached": cfg.cache,
        "n_test": len(fp.y_test),
        "pool_size": len(fp.pool_idx),
        "extract_seconds": fp.extract_seconds,
        "heads_seconds": heads_seconds,
        "wall_seconds": time.perf_counter() - t0,
        "rows": rows,
        "table": aggregate(rows, cfg),
        "mean_curves": mean_curves(curves, cfg.sizes),
    }
    runs.atomic_write_csv(folder / "runs.csv", rows)
    runs.atomic_write_csv(folder / "curves.csv", curves)
    runs.write_json(folder / "result.json", result_dict)
    return result_dict


def mean_curves(curves: list[dict], sizes: tuple[int, ...]) -> dict[str, list[float]]:
    """Per size: test accuracy per epoch, mean over seeds (the reported lr)."""
    out = {}
    for n in sizes:
        by_epoch: dict[int, list[float]] = {}
        for r in curves:
            if r["size"] == n:
                by_epoch.setdefault(r["epoch"], []).append(r["test_acc"])
        out[str(n)] = [sum(v) / len(v) for _, v in sorted(by_epoch.items())]
    return out


def run_backbones(
    run_one, cfg, run_: StudyRun, skip_missing: bool
) -> tuple[dict[str, dict], dict[str, str]]:
    """Every backbone as a cell; the finished ones' results and the skipped ones' reasons."""
    cells = backbone_cells(run_one, cfg, run_.out, run_.cell_progress, run_.data_dir, skip_missing)
    done = run_.executor.run(cells, root=run_.out)
    results = {n: r for n, r in done.items() if "skipped" not in r}
    return results, {n: r["skipped"] for n, r in done.items() if "skipped" in r}


def backbone_cells(run_one, cfg, out: Path, progress, data_dir, skip_missing: bool) -> list[Cell]:
    """One cell per backbone (its features and every head); a backbone without weights is
    ``{"skipped": reason}`` when ``skip_missing``."""

    def cell(name: str) -> dict:
        try:
            return run_one(name, cfg, out, progress or default_progress(), data_dir)
        except MnistlabError as exc:
            if not skip_missing or "no ImageNet weights" not in str(exc):
                raise
            return {"skipped": str(exc)}

    gpus = 1.0 if pick_device(cfg.device).type == "cuda" else 0.0
    return [Cell(name, lambda name=name: cell(name), gpus=gpus) for name in cfg.backbones]


def aggregate(rows: list[dict], cfg: FewshotConfig) -> list[dict]:
    """Per size: best test accuracy / lowest error / epochs to best / validation-selected
    test accuracy, each as (mean, 95 % CI half-width) over seeds."""
    table = []
    for n in cfg.sizes:
        sel = [r for r in rows if r["size"] == n]
        acc = mean_ci([r["best_test_acc"] for r in sel])
        table.append(
            {
                "size": n,
                "seeds": len(sel),
                "best_test_acc": acc,
                "lowest_test_error": (1 - acc[0], acc[1]),
                "epochs_to_best": mean_ci([r["best_epoch"] for r in sel]),
                "epochs_to_near_best": mean_ci([r["near_best_epoch"] for r in sel]),
                "final_test_acc": mean_ci([r["final_test_acc"] for r in sel]),
                "val_selected_test_acc": mean_ci([r["val_test_acc"] for r in sel]),
                "val_selected_epoch": mean_ci([r["val_epoch"] for r in sel]),
                "val_epoch_same_lr_test_acc": mean_ci(
                    [r["val_epoch_same_lr_test_acc"] for r in sel]
                ),
                "per_seed_best_test_acc": [r["best_test_acc"] for r in sel],
                "per_seed_val_epoch_same_lr_test_acc": [
                    r["val_epoch_same_lr_test_acc"] for r in sel
                ],
                "per_seed_val_selected_test_acc": [r["val_test_acc"] for r in sel],
            }
        )
    return table


def run(
    config: FewshotConfig,
    out_dir: Path | str,
    env: Env | None = None,
    *,
    skip_missing: bool = False,
) -> schemas.FewshotMetrics:
    """Run every backbone (one cell each); with ``skip_missing`` a backbone without weights is
    skipped (and recorded with the reason) instead of failing the whole study.
    Features stay cached across ``env.force``: they are keyed by every input that shapes them.
    """
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_, skip_missing))


def _compute(config, run_: StudyRun, skip_missing: bool) -> dict:
    """The study's work inside its opened run folder; returns its metrics."""
    from mnistlab.figures import fewshot as figures

    out = run_.out
    results, skipped = run_backbones(run_backbone, config, run_, skip_missing)
    for name, reason in skipped.items():
        run_.progress.message(f"fewshot: skipping {name}: {reason}")
    figures.write_all(out, results, config.sizes)
    metrics = {
        "backbones": {n: {k: v for k, v in r.items() if k != "rows"} for n, r in results.items()},
        "skipped": skipped,
        "lr": config.lr,
        "near_best": NEAR_BEST,
    }
    return metrics


__all__ = ["FewshotConfig", "aggregate", "run", "run_backbone"]
