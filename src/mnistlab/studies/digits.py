"""Digits 0–4 → 5–9: the 5×100 MLP, CV tuning, batch norm, dropout (part 1, here), the transfer
variants (part 2, :mod:`mnistlab.studies.digits_transfer`), and the table of parts.

Each part writes its own verified result file under ``<out>/<part>/`` and is skipped when that
file exists, so parts can run alone (``--part``), depend on one another (batch norm needs the
tuned hyper-parameters, transfer needs the tuned model) and resume after an interruption.
Every training goes through the engine; models of one shape train together (the K folds of a
tuning trial, the dropout rates).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import runs
from mnistlab.data import stratified_split
from mnistlab.executors import Cell
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.studies import digits_transfer, digits_tune
from mnistlab.studies.digits_common import (
    STUDY,
    VARIANTS,
    Data,
    DigitsConfig,
    load_digits,
    mlp_config,
    test_metrics,
    to_flat,
)
from mnistlab.studies.opening import open_study
from mnistlab.train.checkpoint import save_checkpoint
from mnistlab.train.engine import EpochInfo, Member, Pool, Schedule, StackResult, train_stack

__all__ = ["PARTS", "STUDY", "VARIANTS", "DigitsConfig", "run"]


@dataclass
class Context:
    """What every part gets: the config, the run folder, data on demand, other parts' results."""

    cfg: DigitsConfig
    out: Path
    device: torch.device
    progress: Progress
    data_dir: Path | str | None
    result: Callable[[str], dict]  # another part's (or variant's) result, computed if needed
    storage: str | None = None  # a shared Optuna database URL for the tuning (--storage)
    _source: Data | None = None

    @property
    def source(self) -> Data:
        if self._source is None:
            self._source = load_digits(self.cfg.source_digits, self.cfg.limit, self.data_dir)
        return self._source


def source_split(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    return stratified_split(ctx.source.y_train, ctx.cfg.val_fraction, seed=ctx.cfg.seed)


def fit_variants(
    ctx: Context,
    configs: dict[str, MLPConfig],
    hp: dict[str, Any],
    *,
    description: str,
    checkpoints: Path | None = None,
    on_epoch: Callable[[EpochInfo], bool | None] | None = None,
) -> StackResult:
    """Train same-shaped MLPs (they may differ in dropout rate) together on the fixed 90/10
    split: early stopping on validation loss, best weights restored, eval-mode metrics on
    the training part every epoch (for learning curves and overfitting gaps)."""
    tr, va = source_split(ctx)
    members = [
        Member(
            seed=ctx.cfg.seed,
            state=build_mlp(c, seed=ctx.cfg.seed).state_dict(),
            train=tr,
            lr=hp["lr"],
            weight_decay=hp["l2"],
            dropout=c.dropout,
            evals={"val": va, "train_eval": tr},
            meta={"variant": name},
        )
        for name, c in configs.items()
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


def _model(config: MLPConfig, state: dict[str, torch.Tensor]) -> MLP:
    model = MLP(config)
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------------------------- part 1


def part_pretrain(ctx: Context) -> dict:
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
        **test_metrics(_model(mcfg, res.states[0]), ctx.source.x_test, ctx.source.y_test),
        "checkpoints": sorted(p.name for p in ckpts.glob("*.pt") if p.name != "resume.pt"),
    }


def _epochs_to(history: list[dict], target: float) -> int | None:
    return next((int(r["epoch"]) for r in history if r["val_acc"] >= target), None)


def variant_summary(ctx: Context, res: StackResult, k: int, config: MLPConfig) -> dict:
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
        **test_metrics(_model(config, res.states[k]), ctx.source.x_test, ctx.source.y_test),
    }


def part_batchnorm(ctx: Context) -> dict:
    hp = ctx.result("tune")["best"]
    folder = ctx.out / "batchnorm"
    result: dict[str, Any] = {"hyperparameters": hp, "target_val_acc": ctx.cfg.target_val_acc}
    for name, bn in (("plain", False), ("batchnorm", True)):
        mcfg = mlp_config(ctx.cfg, batch_norm=bn)
        res = fit_variants(ctx, {name: mcfg}, hp, description=f"digits: {name}")
        runs.atomic_write_csv(folder / f"history_{name}.csv", res.history)
        result[name] = variant_summary(ctx, res, 0, mcfg)
    return result


def part_dropout(ctx: Context) -> dict:
    """Every dropout rate as one stack (same shape; each member its own rate and stream); the
    tuned model without dropout (from the batch-norm part) is rate 0."""
    hp = ctx.result("tune")["best"]
    plain = ctx.result("batchnorm")["plain"]
    configs = {f"dropout_{r}": mlp_config(ctx.cfg, dropout=r) for r in ctx.cfg.dropout_rates}
    res = fit_variants(
        ctx, configs, hp, description=f"digits: dropout × {len(configs)} rates together"
    )
    runs.atomic_write_csv(ctx.out / "dropout" / "history.csv", res.history)
    rates = {"0.0": plain}
    for k, (name, mcfg) in enumerate(configs.items()):
        rates[name.removeprefix("dropout_")] = variant_summary(ctx, res, k, mcfg)
    return {"hyperparameters": hp, "rates": rates, "stack_seconds": res.seconds}


# ------------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class Part:
    """A part of the study: what it needs first and how it is computed."""

    needs: tuple[str, ...]
    compute: Callable[[Context], dict]
    file: str  # its result file, relative to the run folder


def _variant(name: str) -> Part:
    needs = ("tune", "frozen5", "reuse4") if name == "unfreeze2" else ("tune",)
    return Part(needs, lambda ctx: digits_transfer.part_variant(name, ctx), f"transfer/{name}.json")


UNITS: dict[str, Part] = {
    "pretrain": Part((), part_pretrain, "pretrain/result.json"),
    "tune": Part((), digits_tune.part_tune, "tune/result.json"),
    "batchnorm": Part(("tune",), part_batchnorm, "batchnorm/result.json"),
    "dropout": Part(("tune", "batchnorm"), part_dropout, "dropout/result.json"),
    **{v: _variant(v) for v in VARIANTS},
}
# What ``--part`` names (the command line's words) → the units it runs.
PARTS: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain",),
    "tune": ("tune",),
    "batchnorm": ("batchnorm",),
    "dropout": ("dropout",),
    "transfer": ("frozen5", "scratch"),
    "cache": ("cached5",),
    "reuse4": ("reuse4",),
    "unfreeze": ("unfreeze2",),
}


def run(
    config: DigitsConfig,
    out_dir: Path | str,
    *,
    parts: tuple[str, ...] = tuple(PARTS),
    progress: Progress | None = None,
    force: bool = False,
    data_dir: Path | str | None = None,
    executor: Any = None,
    storage: str | None = None,
) -> dict:
    """Run the requested parts (and what they depend on); return every unit's results.

    Args:
        config: the study configuration; ``out_dir`` should be ``results/digits/<hash>``.
        parts: any of :data:`PARTS`; dependencies run automatically.
        force: recompute parts whose results already exist.
    """
    from mnistlab.studies import digits_figures

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}")
    opening = open_study(
        config,
        out_dir,
        progress=progress,
        force=force,
        data_dir=data_dir,
        executor=executor,
        check_counts=True,
    )
    with opening as run_:
        out, device, progress, executor = run_.out, run_.device, run_.progress, run_.executor
        units = [name for part in parts for name in PARTS[part]]
        cells = unit_cells(config, out, device, run_.cell_progress, data_dir, units, storage)
        executor.run(cells, root=out)
        results = {c.key: runs.read_finished(out / UNITS[c.key].file) for c in cells}
        digits_figures.write_all(out)
        if set(parts) == set(PARTS) and run_.finished is None:
            run_.finish(summarise(results))
        return results


def unit_cells(
    cfg, out: Path, device, progress, data_dir, units: list[str], storage: str | None = None
) -> list[Cell]:
    """A cell per unit asked for and per unit they need (each reads what it needs from the
    result files of the cells before it, so it can run in another process)."""

    def read(name: str) -> dict:
        return runs.read_finished(out / UNITS[name].file)

    def run_unit(name: str) -> None:
        ctx = Context(cfg, out, device, progress or default_progress(), data_dir, read, storage)
        t0 = time.perf_counter()
        res = UNITS[name].compute(ctx)
        res["wall_seconds"] = time.perf_counter() - t0
        runs.write_json(out / UNITS[name].file, res)
        ctx.progress.message(f"digits: {name} done in {res['wall_seconds']:.1f} s")

    wanted: list[str] = []

    def add(name: str) -> None:
        for need in UNITS[name].needs:
            add(need)
        if name not in wanted:
            wanted.append(name)

    for name in units:
        add(name)
    gpus = 1.0 if device.type == "cuda" else 0.0
    return [
        Cell(
            name,
            lambda name=name: run_unit(name),
            needs=UNITS[name].needs,
            gpus=gpus,
            done=(out / UNITS[name].file).is_file,
        )
        for name in wanted
    ]


def summarise(results: dict) -> dict:
    """The headline numbers of every part (what ``metrics.json`` and the report show first)."""
    out: dict[str, Any] = {}
    if "pretrain" in results:
        p = results["pretrain"]
        out["pretrain"] = {k: p[k] for k in ("test_acc", "test_precision", "best_epoch")}
    if "tune" in results:
        t = results["tune"]
        out["tune"] = {
            k: t[k] for k in ("best", "cv_mean_acc", "cv_sd_acc", "test_acc", "test_precision")
        }
    for v in VARIANTS:
        if v in results:
            out[v] = results[v]["summary"]
    return out
