"""Study: the best honest answers of the digits questions — every choice on (cross-)validation.

* Source digits (0–4): the 5×100 ReLU MLP (Xavier init, Adam, L2) with a wider cross-validated
  search than the as-specified tuning — batch norm, dropout rate, a cosine lr schedule and
  random shifts/rotations of the training images join lr, L2 and batch size; epochs by early
  stopping on the folds. The chosen recipe is retrained on all source training images and
  scored once on the test images. Ablation: retrain without each chosen ingredient.
* Transfer (5–9, 100 images per digit, 200 per digit for validation as in the as-specified
  study; :mod:`.best_transfer`): source models per seed — the searched recipe and a simple
  grid — then, per variant (five frozen layers, four, the better of those with its top two
  unfrozen), the source, the head (lr, L2, augmentation of the 500 images, elastic included)
  and the lr ratio when unfreezing, chosen stage by stage on mean validation accuracy over the
  seeds. Ablation: the stage's neighbour that differs in one ingredient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistlab import runs, schemas
from mnistlab.config import option
from mnistlab.errors import MnistlabError
from mnistlab.executors import Cell
from mnistlab.progress import default as default_progress
from mnistlab.studies.digits import best_transfer, tune
from mnistlab.studies.digits.common import CellContext, DigitsConfig, test_metrics
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.train.checkpoint import save_checkpoint

STUDY = "digits-best"
DEFAULTS = {"batch_norm": False, "dropout": 0.0, "schedule": "constant", "augment": "none"}


@dataclass(frozen=True)
class DigitsBestConfig(DigitsConfig):
    """The as-specified study's data and rules, plus the searches."""

    best_trials: int = option(12, "trials of the wider cross-validated search", lo=1, hi=10_000)
    best_max_epochs: int = option(20, "epoch cap per fold in the search", cli="", lo=1, hi=10_000)
    best_patience: int = option(3, "early-stopping patience in the search", cli="", lo=1, hi=10_000)
    source_l2s: tuple[float, ...] = option(
        (1e-5,), "L2 weights of the simple transfer sources", cli="", lo=0, hi=1
    )
    source_augments: tuple[str, ...] = option(
        ("none", "shift2-rot10-elastic"),
        "augmentations of the simple transfer sources",
        cli="",
        choices=tuple(tune.AUGMENTS),
    )
    head_lrs: tuple[float, ...] = option(
        (3e-2,), "transfer head lrs", cli="", lo=0, hi=10, open_lo=True
    )
    head_l2s: tuple[float, ...] = option((1e-4,), "transfer L2 weights", cli="", lo=0, hi=1)
    head_augments: tuple[str, ...] = option(
        ("none", "shift2-rot10", "shift2-rot10-elastic"),
        "augmentations of the 500 images",
        cli="",
        choices=tuple(tune.AUGMENTS),
    )
    unfreeze_factors: tuple[float, ...] = option(
        (0.1, 0.3), "unfreeze lr ratios", cli="", lo=0, hi=10, open_lo=True
    )


def wide_space(trial) -> dict[str, Any]:
    """The as-specified space (lr, L2, batch) plus batch norm, dropout, schedule, augmentation."""
    return {
        **tune.suggest(trial),
        "batch_norm": trial.suggest_categorical("batch_norm", [False, True]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5, step=0.05),
        "schedule": trial.suggest_categorical("schedule", ["constant", "cosine"]),
        "augment": trial.suggest_categorical(
            "augment", ["none", "shift1", "shift2", "shift2-rot10"]
        ),
    }


# ------------------------------------------------------------------------------ source


def search(ctx: CellContext) -> dict:
    """The cross-validated search (exactly resumable, as the as-specified tuning)."""
    cfg = ctx.cfg
    folder = ctx.out / "search"
    folder.mkdir(parents=True, exist_ok=True)
    tuning = tune.open_tuning(tune.storage_url(folder, None))  # its own database
    tune.repair(tuning.study)
    tune.optimise(
        ctx,
        tuning,
        budget=cfg.best_trials,
        space=wide_space,
        label="digits-best: wider search (Optuna TPE, K folds together)",
        max_epochs=cfg.best_max_epochs,
        patience=cfg.best_patience,
    )
    trials = tune.verified_trials(tuning.study, cfg.folds, tune.describe_url(tuning.url))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        raise MnistlabError("the search finished no trial; raise --trials")
    best = max(complete, key=lambda t: (t.value, -t.number))
    return {
        "params": dict(best.params),
        "cv_acc": best.value,
        "fold_acc": best.user_attrs["fold_acc"],
        "epochs": max(1, round(sum(best.user_attrs["best_epochs"]) / cfg.folds)),
        "n_trials": len(trials),
        "n_pruned": sum(t.state.name == "PRUNED" for t in trials),
    }


def source_models(ctx: CellContext, found: dict) -> dict:
    """The searched recipe retrained on all source images, a plain twin (same lr/L2/batch,
    none of the extras), and one retrain per removed ingredient (the ablation) — those of one
    shape and schedule as one stack."""
    folder = ctx.out / "source"
    params, epochs = found["params"], found["epochs"]
    horizon = ctx.cfg.best_max_epochs if params.get("schedule") == "cosine" else None
    variants = {"best": params}
    for key, default in DEFAULTS.items():
        if params.get(key, default) != default:
            variants[f"without {key}"] = {**params, key: default}
    groups: dict[tuple, list[str]] = {}
    for name, hp in variants.items():
        key = (bool(hp.get("batch_norm")), hp.get("schedule", "constant"))
        groups.setdefault(key, []).append(name)
    out = {}
    for (_, schedule), names in groups.items():
        models, seconds = tune.retrain_together(
            ctx, [variants[n] for n in names], epochs, horizon if schedule == "cosine" else None
        )
        for name, model in zip(names, models, strict=True):
            scores = test_metrics(model, ctx.source.x_test, ctx.source.y_test)
            if name == "best":
                save_checkpoint(
                    folder / f"{name}.pt",
                    {
                        "config": model.config.to_dict(),
                        "model": model.state_dict(),
                        "hp": variants[name],
                    },
                )
            out[name] = {"hp": variants[name], "seconds": seconds / len(names), **scores}
    return out


# ------------------------------------------------------------------------------ run


CELLS = ("search", "source", "sources", "transfer")


def cells_for(cfg: DigitsBestConfig, out: Path, device, progress, data_dir) -> list[Cell]:
    """The four cells (search, the source model, per-seed transfer sources, transfer), each
    after the one before, each stored when done."""

    def run_cell(name: str) -> None:
        ctx = CellContext(cfg, out, device, progress or default_progress(), data_dir, lambda n: {})
        if name == "search":
            res = search(ctx)
        elif name == "source":
            res = source_models(ctx, runs.read_finished(out / "search.json"))
        elif name == "sources":
            res = best_transfer.train_sources(ctx, runs.read_finished(out / "search.json"))
        else:
            res = best_transfer.transfer(ctx, runs.read_finished(out / "sources.json"))
        runs.write_json(out / f"{name}.json", res)

    gpus = 1.0 if device.type == "cuda" else 0.0
    return [
        Cell(
            name,
            lambda name=name: run_cell(name),
            needs=CELLS[:i][-1:],
            gpus=gpus,
            done=(out / f"{name}.json").is_file,
        )
        for i, name in enumerate(CELLS)
    ]


def run(
    config: DigitsBestConfig,
    out_dir: Path | str,
    env: Env | None = None,
) -> schemas.DigitsBestMetrics:
    """Search, retrain, transfer; every cell stored, so an interrupted run resumes."""
    with open_run(config, out_dir, env, check_counts=True) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config, run_: StudyRun) -> dict:
    """The study's work inside its opened run folder; returns its metrics."""
    out, device, executor = run_.out, run_.device, run_.executor
    t0 = time.perf_counter()
    executor.run(cells_for(config, out, device, run_.cell_progress, run_.data_dir), root=out)
    cells_done = {name: runs.read_finished(out / f"{name}.json") for name in CELLS}
    return {**cells_done, "wall_seconds": time.perf_counter() - t0}
