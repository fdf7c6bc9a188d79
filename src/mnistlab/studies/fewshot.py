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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import runs
from mnistlab.config import SEED_MAX, check_device, flag_of, option, validate
from mnistlab.data import COUNTS, balanced_subset, load_mnist
from mnistlab.errors import MnistlabError
from mnistlab.executors import Cell
from mnistlab.io import cache_dir
from mnistlab.models.backbones import (
    BACKBONES,
    build_model,
    get_backbone,
    head_of,
    new_linear,
    resolve_weights,
)
from mnistlab.models.stack import StackedLinear, Step, stack_states
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.stats import mean_ci
from mnistlab.studies.opening import open_study
from mnistlab.train.devices import pick_device
from mnistlab.train.engine import Member, Pool, Schedule, gather, train_stack
from mnistlab.train.features import (
    PRECISIONS,
    FrozenFeatures,
    cached_features,
    feature_key,
    images_digest,
    preprocessing_spec,
    resolve_precision,
)

STUDY = "fewshot"
# On a plateau the single best epoch is mostly noise; the first epoch within half a point of it
# says when training was effectively done.
NEAR_BEST = 0.005


@dataclass(frozen=True)
class FewshotConfig:
    """Defaults: Adam, lr 3e-3, 100 epochs, batch 32 — from ``benchmarks/fewshot_sweep.py``:
    on ResNet-50 features Adam 3e-3 was within 0.1 point of the best lr at every size, SGD
    trailed by 1–3 points, and accuracy moved < 0.5 point after epoch 60."""

    backbones: tuple[str, ...] = option(("resnet50", "vgg19"), "frozen ImageNet backbones", cli="")
    sizes: tuple[int, ...] = option(
        (10, 30, 50, 70, 90), "training images per class", lo=1, hi=10**6
    )
    seeds: int = option(5, "repeats, each a different balanced draw", lo=1, hi=1000)
    seed: int = option(0, "first seed; repeats use seed, seed+1, …", lo=0, hi=SEED_MAX)
    epochs: int = option(100, "epochs of head training", unit="epochs", lo=1, hi=100_000)
    lr: float = option(3e-3, "Adam learning rate of the reported head", lo=0, hi=10, open_lo=True)
    batch_size: int = option(32, "mini-batch size", unit="images", lo=1, hi=65_536)
    val_per_class: int = option(
        20, "validation images per class (honest protocol)", cli="", lo=1, hi=10**6
    )
    lr_grid: tuple[float, ...] = option(
        (1e-3, 3e-3, 1e-2),
        "learning rates the honest protocol chooses from",
        cli="",
        lo=0.0,
        hi=10.0,
        open_lo=True,
    )
    weights: tuple[tuple[str, str], ...] = option((), "(backbone, path|random) overrides", cli="")
    precision: str = option("auto", "feature extraction arithmetic", choices=PRECISIONS)
    cache: bool = option(True, "cache frozen features on disk", cli="")
    test_limit: int | None = option(
        None, "use the first N test images", lo=1, hi=sum(COUNTS["test"])
    )
    image_size: int = option(
        224, "side the digits are scaled up to", unit="px", cli="", lo=16, hi=1024
    )
    extract_batch: int = option(32, "images per feature-extraction batch", cli="", lo=1, hi=4096)
    device: str = option("auto", "auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps")

    def __post_init__(self) -> None:
        if not self.backbones:
            raise MnistlabError("no backbone given")
        for name in self.backbones:
            get_backbone(name)
        if len(set(self.backbones)) != len(self.backbones):
            raise MnistlabError(f"a backbone is listed twice: {list(self.backbones)}")
        validate(self)
        if len(set(self.sizes)) != len(self.sizes):
            raise MnistlabError(f"{flag_of(self, 'sizes')} lists a size twice: {list(self.sizes)}")
        need = max(self.sizes) + self.val_per_class
        if need > min(COUNTS["train"]):
            digit = COUNTS["train"].index(min(COUNTS["train"]))
            raise MnistlabError(
                f"size {max(self.sizes)} per class + {self.val_per_class} validation needs "
                f"{need} images of every digit; digit {digit} has only {min(COUNTS['train'])}"
            )
        for name, _ in self.weights:
            if name != "*":
                get_backbone(name)
        check_device(self.device)


def seed_splits(labels: torch.Tensor, cfg: FewshotConfig) -> dict[int, dict[str, Any]]:
    """Per seed: a validation split, then nested balanced training sets for every size."""
    out = {}
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        val = balanced_subset(labels, cfg.val_per_class, seed=seed + 100_000)
        sizes = {n: balanced_subset(labels, n, seed=seed, exclude=val) for n in cfg.sizes}
        out[seed] = {"val": val, "sizes": sizes}
    return out


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


def _inputs(cfg, name, weights, frozen, x_train, x_test, pool_idx, progress):
    """The pool the heads index into (cached features, or images + the frozen backbone as
    ``prepare``) and the seconds spent extracting."""
    if not cfg.cache:

        def through_backbone(images: torch.Tensor) -> torch.Tensor:
            flat = images.reshape(-1, *images.shape[-2:])
            feats = torch.cat([frozen(part) for part in flat.split(cfg.extract_batch)])
            return feats.view(*images.shape[:-2], -1)

        return torch.cat([x_train[pool_idx], x_test]), through_backbone, 0.0
    t0 = time.perf_counter()
    pool_feats, test_feats = (
        _features(name, weights.digest, frozen, images, tag, cfg.extract_batch, progress)
        for images, tag in ((x_train[pool_idx], "train pool"), (x_test, "test"))
    )
    return torch.cat([pool_feats, test_feats]), None, time.perf_counter() - t0


def _size_rows(
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
    precision = resolve_precision(cfg.precision, device)
    spec = dict(cfg.weights).get(name) or dict(cfg.weights).get("*")
    weights = resolve_weights(name, spec, seed=cfg.seed, progress=progress)
    folder = out / f"{name}-{weights.digest.replace(':', '')[:12]}"
    if (folder / "result.json").is_file():
        return runs.read_finished(folder / "result.json")
    x_train, y_train = load_mnist("train", data_dir)
    x_test, y_test = load_mnist("test", data_dir)
    if cfg.test_limit is not None:
        x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]
    splits = seed_splits(y_train, cfg)
    model = build_model(name, weights, num_classes=10, seed=cfg.seed)
    t0 = time.perf_counter()
    pool_idx = torch.unique(
        torch.cat([torch.cat([sp["val"], *sp["sizes"].values()]) for sp in splits.values()])
    )
    frozen = FrozenFeatures(model, model.head_path, device, precision, cfg.image_size)
    x, prepare, extract_seconds = _inputs(
        cfg, name, weights, frozen, x_train, x_test, pool_idx, progress
    )
    heads = Heads(
        pool=Pool(x, torch.cat([y_train[pool_idx], y_test])),
        row_of=_row_of(pool_idx, len(y_train)),
        test_rows=torch.arange(len(pool_idx), len(pool_idx) + len(y_test)),
        width=head_of(model).in_features,
        prepare=prepare or _identity,
        device=device,
    )
    rows, curves, heads_seconds = [], [], 0.0
    for n in cfg.sizes:
        members, result, chosen = heads.train_size(n, splits, cfg, folder, progress, name)
        heads_seconds += result.seconds
        rows += _size_rows(n, result, members, cfg, chosen)
        curves += [r for r in result.history if r["lr"] == cfg.lr]
    result_dict = {
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
        "pool_size": len(pool_idx),
        "extract_seconds": extract_seconds,
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


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _row_of(pool_idx: torch.Tensor, n: int) -> torch.Tensor:
    """Training-set index → row of the pool (−1 outside it)."""
    row_of = torch.full((n,), -1, dtype=torch.long)
    row_of[pool_idx] = torch.arange(len(pool_idx))
    return row_of


@dataclass
class Heads:
    """The data every head of one backbone indexes into, and how a size's heads train."""

    pool: Pool
    row_of: torch.Tensor
    test_rows: torch.Tensor
    width: int
    prepare: Any
    device: torch.device

    @property
    def cached(self) -> bool:
        return self.prepare is _identity

    def train_size(self, n: int, splits, cfg: FewshotConfig, folder: Path, progress, name: str):
        """Every seed × learning rate at ``n`` per class as one stack; each head ends on its
        best-validation epoch (earliest on ties), the honest protocol's choice. On cached
        features only the reported lr is scored on test every epoch (the study's curves);
        the other heads are scored once, at their chosen epoch. Returns the members, the
        stack's result and every head's test accuracy at its chosen epoch."""
        members = [
            Member(
                seed=seed,
                state=new_linear(self.width, 10, seed).state_dict(),
                train=self.row_of[sp["sizes"][n]],
                lr=lr,
                evals={"val": self.row_of[sp["val"]]},
                meta={"seed": seed, "size": n, "lr": lr},
                shared=None if lr == cfg.lr or not self.cached else frozenset(),
            )
            for seed, sp in splits.items()
            for lr in sorted({cfg.lr, *cfg.lr_grid})
        ]
        result = train_stack(
            StackedLinear(),
            members,
            self.pool,
            Schedule(
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                optimizer="adam",
                monitor="val_acc",
                maximize=True,
                restore_best=True,
                checkpoint_every=10,
            ),
            trainable={"weight", "bias"},
            device=self.device,
            prepare=self.prepare,
            shared_evals={"test": self.test_rows},
            checkpoint=folder / "checkpoints" / f"size{n}.pt",
            progress=progress,
            description=f"fewshot: {name} heads, {n}/class ({len(members)} together)",
        )
        return members, result, self.chosen_test_acc(result)

    @torch.no_grad()
    def chosen_test_acc(self, result) -> list[float] | None:
        """Each head's test accuracy with its restored (validation-chosen) weights."""
        if not self.cached:
            return None  # the uncached path scored every head on test every epoch
        p = stack_states(result.states)
        x = gather(self.pool.x, self.test_rows.to(self.pool.x.device)).cpu()
        logits = StackedLinear().forward_shared(p, x, Step(False))
        y = self.pool.y[self.test_rows].cpu()
        return [c / len(y) for c in (logits.argmax(2) == y).sum(1).tolist()]


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

    gpus = 1.0 if cfg.device.startswith("cuda") else 0.0
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
    *,
    progress: Progress | None = None,
    force: bool = False,
    skip_missing: bool = False,
    data_dir: Path | str | None = None,
    executor: Any = None,
) -> dict:
    """Run every backbone (one cell each); with ``skip_missing`` a backbone without weights is
    skipped (and recorded with the reason) instead of failing the whole study.

    Args:
        config: the study configuration; ``out_dir`` is ``results/fewshot/<config-hash>``.
        force: recompute (features stay cached: they are keyed by every input that shapes them).
    """
    from mnistlab.studies import fewshot_figures

    opening = open_study(
        config, out_dir, progress=progress, force=force, data_dir=data_dir, executor=executor
    )
    with opening as run_:
        if run_.finished is not None:
            return run_.finished
        out, progress, executor = run_.out, run_.progress, run_.executor
        cells = backbone_cells(
            run_backbone, config, out, run_.cell_progress, data_dir, skip_missing
        )
        done = executor.run(cells, root=out)
        results = {n: r for n, r in done.items() if "skipped" not in r}
        skipped = {n: r["skipped"] for n, r in done.items() if "skipped" in r}
        for name, reason in skipped.items():
            progress.message(f"fewshot: skipping {name}: {reason}")
        fewshot_figures.write_all(out, results, config.sizes)
        metrics = {
            "backbones": {
                n: {k: v for k, v in r.items() if k != "rows"} for n, r in results.items()
            },
            "skipped": skipped,
            "lr": config.lr,
            "near_best": NEAR_BEST,
        }
        return run_.finish(metrics)


__all__ = ["BACKBONES", "FewshotConfig", "aggregate", "run", "run_backbone", "seed_splits"]
