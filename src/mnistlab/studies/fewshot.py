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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab import runs
from mnistlab.data import balanced_subset, load_mnist
from mnistlab.errors import MnistlabError
from mnistlab.models.backbones import (
    build_model,
    get_backbone,
    head_of,
    new_linear,
    resolve_weights,
)
from mnistlab.progress import Progress
from mnistlab.stats import mean_ci
from mnistlab.train.features import (
    FrozenFeatures,
    cached_features,
    feature_key,
    images_digest,
    preprocessing_spec,
    resolve_precision,
)
from mnistlab.train.loop import evaluate, pick_device, train_epoch

STUDY = "fewshot"
# On a plateau the single best epoch is mostly noise; the first epoch within half a point of it
# says when training was effectively done.
NEAR_BEST = 0.005


@dataclass(frozen=True)
class FewshotConfig:
    """Defaults: Adam, lr 3e-3, 100 epochs, batch 32 — from ``benchmarks/fewshot_sweep.py``:
    on ResNet-50 features Adam 3e-3 was within 0.1 point of the best lr at every size, SGD
    trailed by 1–3 points, and accuracy moved < 0.5 point after epoch 60."""

    backbones: tuple[str, ...] = ("resnet50", "vgg19")
    sizes: tuple[int, ...] = (10, 30, 50, 70, 90)
    seeds: int = 5
    seed: int = 0
    epochs: int = 100
    lr: float = 3e-3
    batch_size: int = 32
    val_per_class: int = 20
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # searched on validation (honest protocol)
    weights: tuple[tuple[str, str], ...] = ()  # (backbone, path | "random") overrides
    precision: str = "auto"
    cache: bool = True
    test_limit: int | None = None
    image_size: int = 224
    extract_batch: int = 64
    device: str = "auto"


@dataclass
class Split:
    train_idx: torch.Tensor  # indices into the MNIST training set (largest size)
    val_idx: torch.Tensor


def seed_splits(labels: torch.Tensor, cfg: FewshotConfig) -> dict[int, dict[str, Any]]:
    """Per seed: a validation split, then nested balanced training sets for every size."""
    out = {}
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        val = balanced_subset(labels, cfg.val_per_class, seed=seed + 100_000)
        sizes = {n: balanced_subset(labels, n, seed=seed, exclude=val) for n in cfg.sizes}
        out[seed] = {"val": val, "sizes": sizes}
    return out


def train_head(
    head: nn.Linear,
    train: tuple,
    val: tuple,
    test: tuple,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    transform=None,
) -> list[dict[str, float]]:
    """Adam + cross-entropy on the head; val and test accuracy after every epoch.

    ``train``/``val``/``test`` are (inputs, labels): cached features with ``transform=None``,
    or uint8 images with ``transform`` = the frozen backbone (the uncached path).
    """
    kw = {} if transform is None else {"transform": transform}
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        stats = train_epoch(
            head, *train, optimizer, batch_size=batch_size, generator=generator, **kw
        )
        history.append(
            {
                "epoch": epoch,
                "train_loss": stats.loss,
                "train_acc": stats.acc,
                "val_acc": evaluate(head, *val, **kw).acc,
                "test_acc": evaluate(head, *test, **kw).acc,
            }
        )
    return history


def best_of(history: list[dict], key: str) -> dict:
    """The first epoch with the highest ``key`` (ties go to the earlier epoch)."""
    return max(history, key=lambda r: (r[key], -r["epoch"]))


def _features(
    name: str,
    weights_digest: str,
    extractor: FrozenFeatures,
    images: torch.Tensor,
    tag: str,
    batch_size: int,
    progress: Progress,
) -> torch.Tensor:
    """Features of ``images`` from the tool's feature cache, computed and stored on a miss."""
    from mnistlab.data.mnist import cache_dir

    key = feature_key(
        name,
        weights_digest,
        preprocessing_spec(extractor.size),
        extractor.precision,
        images_digest(images),
    )
    feats, hit = cached_features(
        cache_dir() / "features",
        key,
        lambda: extractor.extract(
            images, batch_size, progress, f"fewshot: {name} features ({tag})"
        ),
        progress,
    )
    if hit:
        progress.message(f"fewshot: {name} {tag} features loaded from cache")
    return feats


def run_backbone(name: str, cfg: FewshotConfig, out: Path, progress: Progress) -> dict:
    """All seeds and sizes for one backbone; returns its result dict (also written to disk)."""
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    spec = dict(cfg.weights).get(name) or dict(cfg.weights).get("*")
    weights = resolve_weights(name, spec, seed=cfg.seed, progress=progress)
    folder = out / f"{name}-{weights.digest.replace(':', '')[:12]}"
    if (folder / "result.json").is_file():
        return runs.read_json(folder / "result.json")
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    if cfg.test_limit is not None:
        x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]
    splits = seed_splits(y_train, cfg)
    model = build_model(name, weights, num_classes=10, seed=cfg.seed)
    t0 = time.perf_counter()
    pool = torch.unique(
        torch.cat([torch.cat([sp["val"], *sp["sizes"].values()]) for sp in splits.values()])
    )
    extract_seconds = 0.0
    frozen = FrozenFeatures(model, model.head_path, device, precision, cfg.image_size)
    if cfg.cache:
        te = time.perf_counter()
        pool_feats, test_feats = (
            _features(name, weights.digest, frozen, images, tag, cfg.extract_batch, progress)
            for images, tag in ((x_train[pool], "train pool"), (x_test, "test"))
        )
        extract_seconds = time.perf_counter() - te
        row_of = torch.full((len(y_train),), -1, dtype=torch.long)
        row_of[pool] = torch.arange(len(pool))
        inputs = lambda idx: pool_feats[row_of[idx]]  # noqa: E731
        test = (test_feats, y_test)
        transform = None
    else:
        inputs = lambda idx: x_train[idx]  # noqa: E731
        test = (x_test, y_test)
        transform = frozen
    in_features = head_of(model).in_features
    rows, curves = [], []
    task = progress.task(f"fewshot: {name} heads", len(splits) * len(cfg.sizes))
    for seed, sp in splits.items():
        val = (inputs(sp["val"]), y_train[sp["val"]])
        for n in cfg.sizes:
            idx = sp["sizes"][n]
            train = (inputs(idx), y_train[idx])
            per_lr = {}
            for lr in sorted({cfg.lr, *cfg.lr_grid}):
                per_lr[lr] = train_head(
                    new_linear(in_features, 10, seed),
                    train,
                    val,
                    test,
                    lr=lr,
                    epochs=cfg.epochs,
                    batch_size=cfg.batch_size,
                    seed=seed,
                    transform=transform,
                )
            main = per_lr[cfg.lr]
            best = best_of(main, "test_acc")
            chosen_lr, chosen = max(
                ((lr, best_of(h, "val_acc")) for lr, h in per_lr.items()),
                key=lambda p: (p[1]["val_acc"], -p[1]["epoch"]),
            )
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
                    "val_test_acc": chosen["test_acc"],
                }
            )
            curves += [{"seed": seed, "size": n, **r} for r in main]
            task.advance(1, acc=best["test_acc"])
    task.done()
    result = {
        "backbone": name,
        "folder": folder.name,
        "weights_source": weights.source,
        "weights_digest": weights.digest,
        "random_weights": weights.is_random,
        "variant": weights.variant,
        "precision": precision,
        "device": str(device),
        "cached": cfg.cache,
        "n_test": len(y_test),
        "pool_size": len(pool),
        "extract_seconds": extract_seconds,
        "wall_seconds": time.perf_counter() - t0,
        "rows": rows,
        "table": aggregate(rows, cfg),
    }
    runs.atomic_write_csv(folder / "runs.csv", rows)
    runs.atomic_write_csv(folder / "curves.csv", curves)
    runs.atomic_write_json(folder / "result.json", result)
    return result


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
                "val_selected_test_acc": mean_ci([r["val_test_acc"] for r in sel]),
                "val_selected_epoch": mean_ci([r["val_epoch"] for r in sel]),
            }
        )
    return table


def run(
    config: FewshotConfig,
    out_dir: Path | str,
    *,
    progress: Progress | None = None,
    force: bool = False,
    skip_missing: bool = False,
) -> dict:
    """Run every backbone; with ``skip_missing`` a backbone without weights is skipped (and
    recorded with the reason) instead of failing the whole study.

    Args:
        config: the study configuration; ``out_dir`` is ``results/fewshot/<config-hash>``.
        force: recompute (features stay cached: they are keyed by every input that shapes them).
    """
    from mnistlab.studies import fewshot_figures

    progress = progress or Progress()
    out = Path(out_dir)
    _validate(config)
    if (done := runs.begin(out, config, force=force)) is not None:
        return done
    results, skipped = {}, {}
    for name in config.backbones:
        try:
            results[name] = run_backbone(name, config, out, progress)
        except MnistlabError as exc:
            if not skip_missing or "no ImageNet weights" not in str(exc):
                raise
            skipped[name] = str(exc)
            progress.message(f"fewshot: skipping {name}: {exc}")
    fewshot_figures.write_all(out, results, config.sizes)
    metrics = {
        "backbones": {n: {k: v for k, v in r.items() if k != "rows"} for n, r in results.items()},
        "skipped": skipped,
    }
    runs.finish_run(out, metrics)
    return metrics


def _validate(cfg: FewshotConfig) -> None:
    for name in cfg.backbones:
        get_backbone(name)
    if not cfg.backbones:
        raise MnistlabError("no backbone given")
    if not cfg.sizes:
        raise MnistlabError("empty size list")
    if any(n < 1 for n in cfg.sizes):
        raise MnistlabError(f"sizes must be positive, got {list(cfg.sizes)}")
    _, labels = load_mnist("train")
    smallest = int(torch.bincount(labels).min())
    need = max(cfg.sizes) + cfg.val_per_class
    if need > smallest:
        digit = int(torch.bincount(labels).argmin())
        raise MnistlabError(
            f"size {max(cfg.sizes)} per class + {cfg.val_per_class} validation needs {need} "
            f"images of every digit; digit {digit} has only {smallest}"
        )
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise MnistlabError(f"unknown precision {cfg.precision!r}")
