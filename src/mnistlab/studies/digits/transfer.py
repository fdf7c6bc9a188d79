"""Digits study, part 2: transfer from the source-digit model to the target digits with a few
images per digit.

Variants (same data per seed, same stopping rule, every seed of a variant trained together as
one stack): the MLP from scratch, the five pretrained hidden layers frozen with a new output
layer, the same with the frozen stack's outputs cached, four reused layers, and the better
frozen variant (on validation accuracy) with its top two layers unfrozen.

Every transfer seed has its own source model — the tuned recipe retrained with that seed
(``part_sources``) — so the spread over seeds covers what a rerun of the source's training
changes, not only the new head and the draw of the few target images. Frozen layers therefore
differ per seed: they run inside the stack as fixed tensors (``frozen5``), or, cached, once
per image and seed (``cached5``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mnistlab.data import balanced_subset, parse_digits
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp, xavier_init
from mnistlab.models.state import load_state_strict
from mnistlab.stats import mean_ci
from mnistlab.studies.digits.common import (
    VARIANT_LABELS,
    CellContext,
    Data,
    DigitsConfig,
    load_digits,
    load_model,
    mlp_config,
    test_metrics,
    to_flat,
)
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.engine import (
    Member,
    Pool,
    Schedule,
    StackResult,
    identity,
    prepared_pool,
    train_stack,
)
from mnistlab.train.evaluate import solo


class Reused(nn.Module):
    """The first ``n_layers`` hidden blocks of a pretrained MLP, frozen, plus a new head.

    ``train()`` keeps the frozen blocks in eval mode, so batch-norm statistics or dropout in a
    reused stack are never touched; ``unfreeze(k)`` makes the top ``k`` reused blocks trainable.
    """

    def __init__(self, source: MLP, n_layers: int, n_classes: int, seed: int):
        super().__init__()
        self.stack = nn.ModuleList(copy.deepcopy(list(source.hidden[:n_layers])))
        width = source.config.hidden[n_layers - 1]
        self.head = new_head(width, n_classes, seed)
        self.trainable_from = n_layers  # blocks with index >= this train
        self.stack.requires_grad_(False)

    def unfreeze(self, k: int) -> None:
        self.trainable_from = len(self.stack) - k
        for block in self.stack[self.trainable_from :]:
            block.requires_grad_(True)

    def train(self, mode: bool = True) -> Reused:
        super().train(mode)
        for block in self.stack[: self.trainable_from]:
            block.eval()
        return self

    def features(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        for block in self.stack[:upto]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def transfer_schedule(cfg: DigitsConfig) -> Schedule:
    """One stopping rule for every transfer variant, as specified and best alike."""
    return Schedule(
        epochs=cfg.transfer_max_epochs,
        batch_size=cfg.transfer_batch_size,
        patience=cfg.transfer_patience,
        min_delta=cfg.transfer_min_delta,
        restore_best=True,
    )


def new_head(width: int, n_classes: int, seed: int) -> nn.Linear:
    """A fresh Xavier-initialised output layer; the same seed gives the same layer."""
    head = nn.Linear(width, n_classes)
    xavier_init(head, torch.Generator().manual_seed(seed))
    return head


def transfer_split(cfg: DigitsConfig, target: Data, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_digit`` training images per target digit and a disjoint validation set (indices
    into the target training images)."""
    tr = balanced_subset(target.y_train, cfg.per_digit, seed=seed)
    va = balanced_subset(target.y_train, cfg.val_per_digit, seed=seed + 10_000, exclude=tr)
    return tr, va


@dataclass
class Plan:
    """How one variant trains: the frozen part (shared), the stacked part and where it starts."""

    frozen: int  # source blocks frozen and run outside the stack
    depth: int  # hidden blocks of the transferred model (5, or 4 for reuse4)
    init: Callable[[int], nn.Module]  # seed → the member's solo model, initialised
    lr: float


def source_path(out: Path, seed: int) -> Path:
    """The source model of transfer seed ``seed``: the tuned recipe retrained with it."""
    return out / "sources" / f"source_seed{seed}.pt"


def transfer_seeds(cfg: DigitsConfig) -> list[int]:
    return [cfg.seed + s for s in range(cfg.transfer_seeds)]


def part_sources(ctx: CellContext) -> dict:
    """The tuned recipe retrained on every source training image once per transfer seed, as
    one stack (same epochs as the tuned model); each seed's test scores on the source digits."""
    from mnistlab.studies.digits.tune import retrain_together

    cfg, tuned = ctx.cfg, ctx.result("tune")
    seeds = transfer_seeds(cfg)
    hp = tuned["best"]
    models, seconds = retrain_together(ctx, [hp] * len(seeds), tuned["retrain_epochs"], seeds=seeds)
    scores = []
    for seed, model in zip(seeds, models, strict=True):
        save_checkpoint(
            source_path(ctx.out, seed),
            {"config": model.config.to_dict(), "model": model.state_dict(), "kind": "source"},
        )
        scores.append({"seed": seed, **test_metrics(model, ctx.source.x_test, ctx.source.y_test)})
    summary = {k: mean_ci([s[k] for s in scores]) for k in ("test_acc", "test_precision")}
    return {"hyperparameters": hp, "seeds": scores, "summary": summary, "seconds": seconds}


def _plan(variant: str, ctx: CellContext, sources: dict[int, MLP]) -> tuple[Plan, dict]:
    cfg = ctx.cfg
    k = len(parse_digits(cfg.target_digits))
    if variant == "scratch":
        mcfg = mlp_config(cfg)
        return Plan(0, 5, lambda seed: build_mlp(mcfg, seed=seed), cfg.transfer_lr), {}
    if variant in ("frozen5", "cached5", "reuse4"):
        n = 4 if variant == "reuse4" else 5
        return Plan(n, n, lambda seed: Reused(sources[seed], n, k, seed), cfg.transfer_lr), {}
    # unfreeze2: continue from the better frozen variant, chosen on validation accuracy
    val = {v: ctx.result(v)["summary"]["val_acc"][0] for v in ("frozen5", "reuse4")}
    base = max(val, key=val.get)
    n = 5 if base == "frozen5" else 4

    def init(seed: int) -> nn.Module:
        model = Reused(sources[seed], n, k, seed)
        saved = load_checkpoint(ctx.out / "transfer" / "models" / f"{base}_seed{seed}.pt")
        load_state_strict(model, saved["model"], base)
        model.unfreeze(2)
        return model

    lr = cfg.transfer_lr * cfg.unfreeze_lr_factor
    return Plan(n - 2, n, init, lr), {"base_variant": base, "base_val_acc": val}


def frozen_trunk(
    source: MLP, n: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images → the first ``n`` frozen source blocks' output (eval mode, no gradient)."""
    blocks = nn.Sequential(*copy.deepcopy(list(source.hidden[:n]))).to(device).eval()

    @torch.no_grad()
    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = to_flat(images)
        return blocks(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    return prepare


def part_variant(variant: str, ctx: CellContext) -> dict:
    """All seeds of one variant as one stack, seed s on the source model of seed s."""
    cfg = ctx.cfg
    hp = ctx.result("tune")["best"]
    seeds = transfer_seeds(cfg)
    sources = (
        {}
        if variant == "scratch"
        else {s: load_model(source_path(ctx.out, s), mlp_config(cfg)) for s in seeds}
    )
    target = load_digits(cfg.target_digits, cfg.limit, ctx.data_dir)
    plan, extra = _plan(variant, ctx, sources)
    splits = {seed: transfer_split(cfg, target, seed) for seed in seeds}
    models = {seed: plan.init(seed) for seed in seeds}
    t0 = time.perf_counter()
    pool, splits, first = _inputs(variant, plan, sources, target, splits, ctx.device)
    feature_seconds = time.perf_counter() - t0
    res = _train(variant, plan, models, splits, pool, first, hp, ctx)
    total_seconds = feature_seconds + res.seconds
    scores = _score(variant, ctx, res, models, target, total_seconds)
    summary = {
        k: mean_ci([s[k] for s in scores])
        for k in ("test_acc", "test_precision", "val_acc", "best_epoch", "epochs_run")
    }
    summary["seconds"] = (total_seconds / len(seeds), 0.0)
    n_target = len(parse_digits(cfg.target_digits))
    return {
        "variant": variant,
        "label": VARIANT_LABELS[variant],
        "source_models": [str(source_path(ctx.out, s).relative_to(ctx.out)) for s in seeds],
        "hyperparameters": {**hp, "lr": plan.lr},
        "seeds": scores,
        "summary": summary,
        "stack_seconds": total_seconds,
        "feature_seconds": feature_seconds,
        "n_train": cfg.per_digit * n_target,
        "n_val": cfg.val_per_digit * n_target,
        "n_test": len(target.y_test),
        "per_digit": cfg.per_digit,
        "target_digits": cfg.target_digits,
        "source_digits": cfg.source_digits,
        **extra,
    }


def _inputs(variant: str, plan: Plan, sources, target: Data, splits, device: torch.device):
    """(pool, splits, first block the stack runs): raw images, every member running its own
    seed's frozen blocks inside the stack as fixed tensors; or, ``cached5``, each seed's
    frozen-block outputs computed once per image (timed with the training), one copy of the
    target images per seed in the pool and each seed's indices shifted to its copy."""
    pool = Pool(target.x_train, target.y_train)
    if variant != "cached5":
        return pool, splits, 0
    parts, shifted = [], {}
    for i, (seed, (tr, va)) in enumerate(splits.items()):
        trunk = frozen_trunk(sources[seed], plan.frozen, device)
        parts.append(prepared_pool(pool.to(device), trunk))
        shifted[seed] = (tr + i * len(pool.y), va + i * len(pool.y))
    cached = Pool(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    return cached, shifted, plan.frozen


def _train(variant, plan: Plan, models, splits, pool, first, hp, ctx: CellContext) -> StackResult:
    cfg = ctx.cfg
    any_model = next(iter(models.values()))
    prefix = "hidden" if variant == "scratch" else "stack"
    shape = MLPConfig(hidden=(100,) * plan.depth, n_classes=any_model.head.out_features)
    members = [
        Member(
            seed=seed,
            state=model.state_dict(),
            train=splits[seed][0],
            lr=plan.lr,
            weight_decay=hp["l2"],
            evals={"val": splits[seed][1]},
            meta={"variant": variant, "seed": seed},
        )
        for seed, model in models.items()
    ]
    return train_stack(
        StackedMLP(shape, prefix, first),
        members,
        pool,
        transfer_schedule(cfg),
        trainable={n for n, p in any_model.named_parameters() if p.requires_grad},
        device=ctx.device,
        prepare=to_flat if first == 0 else identity,
        checkpoint=ctx.out / "transfer" / "checkpoints" / f"{variant}.pt",
        progress=ctx.progress,
        description=f"digits: transfer {variant} × {len(members)} seeds together",
    )


def _score(variant, ctx, res: StackResult, models, target, seconds: float) -> list[dict]:
    """Per seed: test scores of the restored best model, validation accuracy at its best
    epoch, and the model saved for the variants that build on it."""
    out = []
    for k, (seed, model) in enumerate(models.items()):
        solo(model, res.states[k], variant)
        save_checkpoint(
            ctx.out / "transfer" / "models" / f"{variant}_seed{seed}.pt",
            {"model": res.states[k], "variant": variant, "seed": seed},
        )
        best = res.rows(k)[res.best_epoch[k] - 1]
        out.append(
            {
                "seed": seed,
                **test_metrics(model, target.x_test, target.y_test),
                "val_acc": best["val_acc"],
                "best_epoch": res.best_epoch[k],
                "epochs_run": res.epochs_run[k],
                "seconds": seconds / len(models),
            }
        )
    return out
