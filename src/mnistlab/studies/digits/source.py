"""Part 1 on the source digits: the baseline with checkpoints, batch norm and dropout — same
shaped MLPs trained together on one fixed validation split, each with its learning curves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnistlab import runs
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp
from mnistlab.studies.digits.common import (
    CellContext,
    mlp_config,
    source_split,
    test_metrics,
    to_flat,
)
from mnistlab.train.checkpoint import save_checkpoint
from mnistlab.train.engine import EpochInfo, Member, Pool, Schedule, StackResult, train_stack
from mnistlab.train.evaluate import solo


def fit_variants(
    ctx: CellContext,
    configs: dict[str, MLPConfig],
    hp: dict[str, Any],
    *,
    description: str,
    seeds: tuple[int, ...] | None = None,
    checkpoints: Path | None = None,
    on_epoch: Callable[[EpochInfo], bool | None] | None = None,
) -> StackResult:
    """Train same-shaped MLPs (they may differ in dropout rate) together on the fixed 90/10
    split: early stopping on validation loss, best weights restored, eval-mode metrics on
    the training part every epoch (for learning curves and overfitting gaps). Every config is
    trained once per seed (init, batch order, dropout stream): member ``i·S + j`` is config
    ``i`` with seed ``j``."""
    tr, va = source_split(ctx)
    members = [
        Member(
            seed=seed,
            state=build_mlp(c, seed=seed).state_dict(),
            train=tr,
            lr=hp["lr"],
            weight_decay=hp["l2"],
            dropout=c.dropout,
            evals={"val": va, "train_eval": tr},
            meta={"variant": name, "seed": seed},
        )
        for name, c in configs.items()
        for seed in (seeds or (ctx.cfg.seed,))
    ]
    shape = next(iter(configs.values()))
    return train_stack(
        StackedMLP(shape),
        members,
        Pool(ctx.source.x_train, ctx.source.y_train),
        Schedule(
            epochs=ctx.cfg.max_epochs,
            batch_size=hp["batch_size"],
            patience=ctx.cfg.patience,
            restore_best=True,
        ),
        trainable={n for n, _ in MLP(shape).named_parameters()},
        device=ctx.device,
        prepare=to_flat,
        checkpoint=checkpoints,
        progress=ctx.progress,
        description=description,
        on_epoch=on_epoch,
    )


def part_pretrain(ctx: CellContext) -> dict:
    """The baseline MLP with the study's checkpoints: every ``checkpoint_every`` epochs, the
    best so far and the final epoch — each a standalone model file."""
    folder = ctx.out / "pretrain"
    ckpts = folder / "checkpoints"
    mcfg = mlp_config(ctx.cfg)
    hp = {"lr": ctx.cfg.lr, "l2": ctx.cfg.l2, "batch_size": ctx.cfg.batch_size}

    def export(info: EpochInfo) -> None:
        state = info.stack.state(0)

        def save(name: str, kind: str) -> None:
            save_checkpoint(
                ckpts / name,
                {
                    "config": mcfg.to_dict(),
                    "model": state,
                    "epoch": info.epoch,
                    "kind": kind,
                    "metrics": info.rows[0],
                },
            )

        if info.improved[0]:
            save("best.pt", "best")
        if info.epoch % ctx.cfg.checkpoint_every == 0:
            save(f"epoch_{info.epoch:03d}.pt", "epoch")
        if info.last:
            save("final.pt", "final")

    res = fit_variants(
        ctx,
        {"baseline": mcfg},
        hp,
        description="digits: pretrain baseline",
        checkpoints=ckpts / "resume.pt",
        on_epoch=export,
    )
    runs.atomic_write_csv(folder / "history.csv", res.history)
    return {
        "hyperparameters": hp,
        "best_epoch": res.best_epoch[0],
        "epochs_run": res.epochs_run[0],
        "seconds": res.seconds,
        **test_metrics(solo(MLP(mcfg), res.states[0]), ctx.source.x_test, ctx.source.y_test),
        "checkpoints": sorted(p.name for p in ckpts.glob("*.pt") if p.name != "resume.pt"),
    }


def _epochs_to(history: list[dict], target: float) -> int | None:
    return next((int(r["epoch"]) for r in history if r["val_acc"] >= target), None)


def variant_summary(ctx: CellContext, res: StackResult, k: int, config: MLPConfig) -> dict:
    """One part-1 model: its curves, when it reached the target, its gaps, its test scores."""
    history = res.rows(k)
    best = history[res.best_epoch[k] - 1]
    return {
        "history": history,
        "best_epoch": res.best_epoch[k],
        "epochs_run": res.epochs_run[k],
        "seconds": res.seconds / len(res.states),
        "epochs_to_target": _epochs_to(history, ctx.cfg.target_val_acc),
        "best_val_acc": max(r["val_acc"] for r in history),
        "val_acc_at_best": best["val_acc"],
        "val_loss_at_best": best["val_loss"],
        "gap_acc_at_best": best["train_eval_acc"] - best["val_acc"],
        "gap_loss_at_best": best["val_loss"] - best["train_eval_loss"],
        **test_metrics(solo(MLP(config), res.states[k]), ctx.source.x_test, ctx.source.y_test),
    }


def part1_seeds(ctx: CellContext) -> tuple[int, ...]:
    """The seeds of the batch-norm and dropout comparisons (paired: seed s gives every
    variant the same batch order)."""
    return tuple(ctx.cfg.seed + s for s in range(ctx.cfg.part1_seeds))


def _by_seed(ctx: CellContext, res: StackResult, first: int, config: MLPConfig) -> list[dict]:
    """One config's summaries, seed by seed (its members ``first …``); the first keeps its
    learning curves (the figures), the others only their numbers."""
    out = []
    for j in range(ctx.cfg.part1_seeds):
        summary = variant_summary(ctx, res, first + j, config)
        if j:
            del summary["history"]
        out.append({"seed": ctx.cfg.seed + j, **summary})
    return out


def part_batchnorm(ctx: CellContext) -> dict:
    """The tuned model with and without batch norm, each over the same seeds."""
    hp = ctx.result("tune")["best"]
    folder = ctx.out / "batchnorm"
    seeds = part1_seeds(ctx)
    result: dict[str, Any] = {
        "hyperparameters": hp,
        "target_val_acc": ctx.cfg.target_val_acc,
        "seeds": list(seeds),
        "by_seed": {},
    }
    for name, bn in (("plain", False), ("batchnorm", True)):
        mcfg = mlp_config(ctx.cfg, batch_norm=bn)
        desc = f"digits: {name} × {len(seeds)} seeds"
        res = fit_variants(ctx, {name: mcfg}, hp, description=desc, seeds=seeds)
        runs.atomic_write_csv(folder / f"history_{name}.csv", res.history)
        result["by_seed"][name] = _by_seed(ctx, res, 0, mcfg)
        result[name] = result["by_seed"][name][0]  # the first seed: curves and single numbers
    return result


def part_dropout(ctx: CellContext) -> dict:
    """Every dropout rate × seed as one stack (same shape; each member its own rate and
    stream); the tuned model without dropout (the batch-norm part's, same seeds) is rate 0."""
    hp = ctx.result("tune")["best"]
    bn = ctx.result("batchnorm")
    configs = {f"dropout_{r}": mlp_config(ctx.cfg, dropout=r) for r in ctx.cfg.dropout_rates}
    seeds = part1_seeds(ctx)
    res = fit_variants(
        ctx,
        configs,
        hp,
        description=f"digits: dropout × {len(configs)} rates × {len(seeds)} seeds together",
        seeds=seeds,
    )
    runs.atomic_write_csv(ctx.out / "dropout" / "history.csv", res.history)
    rates = {"0.0": bn["plain"]}
    by_seed = {"0.0": bn["by_seed"]["plain"]}
    for i, (name, mcfg) in enumerate(configs.items()):
        rate = name.removeprefix("dropout_")
        by_seed[rate] = _by_seed(ctx, res, i * len(seeds), mcfg)
        rates[rate] = by_seed[rate][0]
    return {
        "hyperparameters": hp,
        "rates": rates,
        "by_seed": by_seed,
        "seeds": list(seeds),
        "stack_seconds": res.seconds,
    }
