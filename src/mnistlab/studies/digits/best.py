"""Study: the best honest answers of the digits questions — every choice on (cross-)validation.

* Source digits (0–4): the 5×100 ReLU MLP (Xavier init, Adam, L2) with a wider cross-validated
  search than the as-specified tuning — batch norm, dropout rate, a cosine lr schedule and
  random shifts/rotations of the training images join lr, L2 and batch size; epochs by early
  stopping on the folds. The chosen recipe is retrained on all source training images and
  scored once on the test images. Ablation: retrain without each chosen ingredient.
* Transfer (5–9, 100 images per digit, 200 per digit for validation as in the as-specified
  study): per variant — five frozen layers, four, the better of those with its top two
  unfrozen — a grid over the source model (the searched recipe, or the same lr/L2/batch
  without its extras), head learning rate, L2 and augmentation of the 500 training images
  (and the lr ratio when unfreezing), every configuration × seed trained as one stack, chosen
  on mean validation accuracy over the seeds. Ablation: the grid's neighbour that differs in
  one ingredient.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnistlab import runs, schemas
from mnistlab.config import option
from mnistlab.data import parse_digits
from mnistlab.errors import MnistlabError
from mnistlab.executors import Cell
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP
from mnistlab.progress import default as default_progress
from mnistlab.stats import mean_ci
from mnistlab.studies.digits import tune
from mnistlab.studies.digits.common import (
    CellContext,
    DigitsConfig,
    load_digits,
    test_metrics,
    to_flat,
)
from mnistlab.studies.digits.transfer import (
    Reused,
    frozen_trunk,
    transfer_schedule,
    transfer_split,
)
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.engine import Member, Pool, StackResult, train_stack
from mnistlab.train.evaluate import solo

STUDY = "digits-best"
DEFAULTS = {"batch_norm": False, "dropout": 0.0, "schedule": "constant", "augment": "none"}


@dataclass(frozen=True)
class DigitsBestConfig(DigitsConfig):
    """The as-specified study's data and rules, plus the searches."""

    best_trials: int = option(12, "trials of the wider cross-validated search", lo=1, hi=10_000)
    best_max_epochs: int = option(20, "epoch cap per fold in the search", cli="", lo=1, hi=10_000)
    best_patience: int = option(3, "early-stopping patience in the search", cli="", lo=1, hi=10_000)
    head_lrs: tuple[float, ...] = option(
        (3e-3, 1e-2, 3e-2), "transfer head lrs", cli="", lo=0, hi=10, open_lo=True
    )
    head_l2s: tuple[float, ...] = option((0.0, 1e-4), "transfer L2 weights", cli="", lo=0, hi=1)
    head_augments: tuple[str, ...] = option(
        ("none", "shift2-rot10"), "augmentations", cli="", choices=tuple(tune.AUGMENTS)
    )
    unfreeze_factors: tuple[float, ...] = option(
        (0.1, 0.3, 1.0), "unfreeze lr ratios", cli="", lo=0, hi=10, open_lo=True
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
    variants = {"best": params, "plain": {**params, **DEFAULTS}}
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
            if name in ("best", "plain"):
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


def _load_source(ctx: CellContext, name: str) -> MLP:
    saved = load_checkpoint(ctx.out / "source" / f"{name}.pt")
    return solo(MLP(MLPConfig.from_dict(saved["config"])), saved["model"], name)


# ------------------------------------------------------------------------------ transfer


@dataclass(frozen=True)
class Recipe:
    source: str
    lr: float
    l2: float
    augment: str
    factor: float = 1.0  # lr ratio when unfreezing


def _grid(cfg: DigitsBestConfig, sources=("best", "plain")) -> list[Recipe]:
    return [
        Recipe(s, lr, l2, a)
        for s, lr, l2, a in itertools.product(
            sources, cfg.head_lrs, cfg.head_l2s, cfg.head_augments
        )
    ]


def _transfer_stack(ctx, target, recipes, n_layers, frozen, source, init, trainable, description):
    """Every recipe × seed as one stack (one source: the ``frozen`` bottom blocks are shared
    and run outside the stack)."""
    cfg = ctx.cfg
    seeds = [cfg.seed + s for s in range(cfg.transfer_seeds)]
    splits = {seed: transfer_split(cfg, target, seed) for seed in seeds}
    members = [
        Member(
            seed=seed,
            state=init(r, seed).state_dict(),
            train=splits[seed][0],
            lr=r.lr * r.factor,
            weight_decay=r.l2,
            dropout=source.config.dropout,
            augment=tune.AUGMENTS[r.augment],
            evals={"val": splits[seed][1]},
            meta={"recipe": i, "seed": seed},
        )
        for i, r in enumerate(recipes)
        for seed in seeds
    ]
    shape = replace(
        source.config,
        hidden=source.config.hidden[:n_layers],
        n_classes=len(parse_digits(cfg.target_digits)),
    )
    # Members that draw no augmentation train on the frozen trunk's output computed once per
    # image; those that do need it per batch. Two stacks, so neither waits for the other.
    groups: dict[bool, list[int]] = {}
    for k, m in enumerate(members):
        groups.setdefault(m.augments, []).append(k)
    parts = []
    for augmented, where in sorted(groups.items()):
        res = train_stack(
            StackedMLP(shape, "stack", frozen),
            [members[k] for k in where],
            Pool(target.x_train, target.y_train),
            transfer_schedule(cfg),
            trainable=trainable,
            device=ctx.device,
            prepare=frozen_trunk(source, frozen, ctx.device) if frozen else to_flat,
            progress=ctx.progress,
            description=f"{description}{', augmented' if augmented else ''}",
            cache_prepared=True,
        )
        parts.append((where, res))
    return members, StackResult.merge(parts)


def _score_recipes(recipes, members, res, target, n_layers, source) -> list[dict]:
    """Per recipe: mean validation accuracy (the choice) and per-seed test accuracy."""
    k_of = {(m.meta["recipe"], m.meta["seed"]): k for k, m in enumerate(members)}
    seeds = sorted({m.meta["seed"] for m in members})
    out = []
    for i, r in enumerate(recipes):
        val, test, states = [], [], []
        for seed in seeds:
            k = k_of[(i, seed)]
            val.append(res.rows(k)[res.best_epoch[k] - 1]["val_acc"])
            model = Reused(source, n_layers, len(set(target.y_test.tolist())), seed)
            solo(model, res.states[k], "transfer member")
            test.append(test_metrics(model, target.x_test, target.y_test)["test_acc"])
            states.append(res.states[k])
        out.append(
            {
                "recipe": r.__dict__,
                "val_acc": sum(val) / len(val),
                "test_acc": test,
                "states": states,
            }
        )
    return out


def transfer(ctx: CellContext, cfg: DigitsBestConfig) -> dict:
    target = load_digits(cfg.target_digits, cfg.limit, ctx.data_dir)
    sources = {name: _load_source(ctx, name) for name in ("best", "plain")}
    k = len(parse_digits(cfg.target_digits))
    results: dict[str, list[dict]] = {}
    for variant, n in (("frozen5", 5), ("reuse4", 4)):
        results[variant] = []
        for name, source in sources.items():
            recipes = [r for r in _grid(cfg) if r.source == name]

            def init(r, seed, source=source, n=n):
                return Reused(source, n, k, seed)

            members, res = _transfer_stack(
                ctx,
                target,
                recipes,
                n,
                n,
                source,
                init,
                {"head.weight", "head.bias"},
                f"digits-best: {variant} from the {name} source, {len(recipes)} recipes",
            )
            results[variant] += _score_recipes(recipes, members, res, target, n, source)
    chosen = {v: _choose(results[v]) for v in results}
    base = max(("frozen5", "reuse4"), key=lambda v: chosen[v]["val_acc"])
    results["unfreeze2"] = _unfreeze(ctx, cfg, target, sources, chosen[base], base, k)
    chosen["unfreeze2"] = _choose(results["unfreeze2"])
    return {
        v: {
            "chosen": chosen[v]["recipe"],
            "val_acc": chosen[v]["val_acc"],
            "test_acc": mean_ci(chosen[v]["test_acc"]),
            "per_seed_test_acc": chosen[v]["test_acc"],
            "seeds": [cfg.seed + s for s in range(cfg.transfer_seeds)],
            "ablation": _ablation(results[v], chosen[v]),
            "base_variant": base if v == "unfreeze2" else None,
            "recipes": [
                {k2: r[k2] for k2 in ("recipe", "val_acc", "test_acc")} for r in results[v]
            ],
        }
        for v in results
    }


def _unfreeze(ctx, cfg, target, sources, base: dict, base_variant: str, k: int) -> list[dict]:
    """The chosen frozen recipe, its top two layers unfrozen, over lr ratios × augmentation."""
    n = 5 if base_variant == "frozen5" else 4
    source = sources[base["recipe"]["source"]]
    r0 = Recipe(**base["recipe"])
    recipes = [
        replace(r0, factor=f, augment=a)
        for f, a in itertools.product(cfg.unfreeze_factors, cfg.head_augments)
    ]
    seeds = [cfg.seed + s for s in range(cfg.transfer_seeds)]
    states = dict(zip(seeds, base["states"], strict=True))

    def init(r, seed):
        model = Reused(source, n, k, seed)
        model.load_state_dict(states[seed])
        model.unfreeze(2)
        return model

    trainable = {name for name, p in init(r0, seeds[0]).named_parameters() if p.requires_grad}
    members, res = _transfer_stack(
        ctx,
        target,
        recipes,
        n,
        n - 2,
        source,
        init,
        trainable,
        f"digits-best: unfreeze2 of {base_variant}, {len(recipes)} recipes",
    )
    return _score_recipes(recipes, members, res, target, n, source)


def _choose(scored: list[dict]) -> dict:
    """The recipe with the best mean validation accuracy (ties: the earlier, simpler one)."""
    return max(scored, key=lambda r: r["val_acc"])


def _ablation(scored: list[dict], chosen: dict) -> dict[str, float]:
    """Mean test accuracy lost when one ingredient of the chosen recipe goes back to its
    default (the grid's neighbour), per ingredient."""
    defaults = {"source": "plain", "augment": "none", "l2": 0.0}
    out = {}
    for key, default in defaults.items():
        if chosen["recipe"][key] == default:
            continue
        twin = {**chosen["recipe"], key: default}
        match = next((r for r in scored if r["recipe"] == twin), None)
        if match is not None:
            drop = [a - b for a, b in zip(chosen["test_acc"], match["test_acc"], strict=True)]
            out[f"{key} → {default}"] = sum(drop) / len(drop)
    return out


# ------------------------------------------------------------------------------ run


CELLS = ("search", "source", "transfer")


def cells_for(cfg: DigitsBestConfig, out: Path, device, progress, data_dir) -> list[Cell]:
    """The three cells (search, source models, transfer), each after the one before, each
    stored when done."""

    def run_cell(name: str) -> None:
        ctx = CellContext(cfg, out, device, progress or default_progress(), data_dir, lambda n: {})
        if name == "search":
            res = search(ctx)
        elif name == "source":
            res = source_models(ctx, runs.read_finished(out / "search.json"))
        else:
            res = transfer(ctx, cfg)
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
