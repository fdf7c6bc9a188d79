"""One backbone's frozen features and the heads trained on them — what both few-shot
protocols share: the pool of training rows every seed's draws index into, the test rows after
them, and every seed × learning rate of one size trained as one stack."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab.data import load_mnist
from mnistlab.io import cache_dir
from mnistlab.models.backbones import ResolvedWeights, build_model, get_backbone, new_linear
from mnistlab.models.stack import StackedLinear, Step, stack_states
from mnistlab.progress import Progress
from mnistlab.studies.fewshot.common import FewshotConfig, seed_splits
from mnistlab.train.engine import Member, Pool, Schedule, gather, identity, train_stack
from mnistlab.train.features import (
    FrozenFeatures,
    cached_features,
    feature_key,
    images_digest,
    preprocessing_spec,
    resolve_backend,
    resolve_precision,
)


def features(
    name: str,
    weights_digest: str,
    extractor: FrozenFeatures,
    images: torch.Tensor,
    tag: str,
    batch_size: int,
    progress: Progress,
) -> torch.Tensor:
    """Features of ``images`` from the tool's feature cache, computed and stored on a miss."""
    engine = [] if extractor.engine == "torch" else [extractor.engine]  # torch: the old keys
    key = feature_key(
        name,
        weights_digest,
        preprocessing_spec(extractor.size),
        extractor.precision,
        *engine,
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


def inputs(cfg, name, weights, frozen, x_train, x_test, pool_idx, progress):
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
        features(name, weights.digest, frozen, images, tag, cfg.extract_batch, progress)
        for images, tag in ((x_train[pool_idx], "train pool"), (x_test, "test"))
    )
    return torch.cat([pool_feats, test_feats]), None, time.perf_counter() - t0


def row_of(pool_idx: torch.Tensor, n: int) -> torch.Tensor:
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
    prepare: Any  # rows → head inputs: identity on cached features, the backbone otherwise
    device: torch.device
    cached: bool

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
        result = self.train(
            members,
            cfg,
            folder / "checkpoints" / f"size{n}.pt",
            progress,
            f"{name} heads, {n}/class",
        )
        return members, result, self.chosen_test_acc(result)

    def train(self, members: list[Member], cfg: FewshotConfig, checkpoint: Path, progress, what):
        """``members`` (heads on this pool's rows) as one stack, each ending on its
        best-validation epoch; resumable from ``checkpoint``."""
        return train_stack(
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
            checkpoint=checkpoint,
            progress=progress,
            description=f"fewshot: {what} ({len(members)} together)",
        )

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


@dataclass
class FeaturePool:
    """One backbone ready for heads: its weights, every seed's draws, the labels, and the
    :class:`Heads` over the pool's rows (features when cached, images otherwise)."""

    weights: ResolvedWeights
    precision: str
    engine: str  # what computed the features: torch, or onnxruntime-<version>
    splits: dict[int, dict[str, Any]]
    pool_idx: torch.Tensor  # training-set rows any seed draws from
    y_train: torch.Tensor
    y_test: torch.Tensor
    heads: Heads
    extract_seconds: float
    extractor: FrozenFeatures  # the frozen backbone, for features of other images (views)

    @property
    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool rows, test rows) of the head inputs."""
        n = len(self.pool_idx)
        return self.heads.pool.x[:n], self.heads.pool.x[n:]


def feature_pool(
    name: str,
    cfg: FewshotConfig,
    weights: ResolvedWeights,
    device: torch.device,
    progress: Progress,
    data_dir: Path | str | None = None,
) -> FeaturePool:
    """Draw every seed's sets, build the frozen backbone once, and compute (or load) the
    features of the rows any draw uses and of the test images."""
    precision = resolve_precision(cfg.precision, device)
    backend = resolve_backend(cfg.backend, precision, device)
    x_train, y_train = load_mnist("train", data_dir)
    x_test, y_test = load_mnist("test", data_dir)
    if cfg.test_limit is not None:
        x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]
    splits = seed_splits(y_train, cfg)
    model = build_model(name, weights, num_classes=10, seed=cfg.seed)
    pool_idx = torch.unique(
        torch.cat([torch.cat([sp["val"], *sp["sizes"].values()]) for sp in splits.values()])
    )
    head = get_backbone(name).head
    frozen = FrozenFeatures(model, head, device, precision, cfg.image_size, backend)
    x, prepare, extract_seconds = inputs(
        cfg, name, weights, frozen, x_train, x_test, pool_idx, progress
    )
    heads = Heads(
        pool=Pool(x, torch.cat([y_train[pool_idx], y_test])),
        row_of=row_of(pool_idx, len(y_train)),
        test_rows=torch.arange(len(pool_idx), len(pool_idx) + len(y_test)),
        width=model.get_submodule(head).in_features,
        prepare=prepare or identity,
        device=device,
        cached=prepare is None,
    )
    return FeaturePool(
        weights,
        precision,
        frozen.engine,
        splits,
        pool_idx,
        y_train,
        y_test,
        heads,
        extract_seconds,
        frozen,
    )
