"""Digits study, part 1: cross-validated tuning of the 0–4 MLP with Optuna (TPE, median pruner).

A trial's K folds train together as one stack of the engine; after every epoch the trial
reports the folds' mean validation accuracy (at each fold's best epoch so far), so the median
pruner can stop a poor trial early. The study lives in an Optuna storage (SQLite in the run
folder by default) and resumes exactly:

* the sampler is re-seeded before each trial from the master seed and the number of finished
  trials, so trial n's suggestion depends on the history, never on how many processes (or
  interruptions) it took to get there;
* a trial that did not finish — interrupted by Ctrl-C (marked FAIL) or killed (left RUNNING) —
  is re-run with the same parameters before anything new is sampled;
* every finished trial carries a digest of its parameters and scores, checked (with the
  ranges) before the best trial is chosen: a corrupted database is reported, never used.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from mnistlab.data import stratified_kfold
from mnistlab.errors import MnistlabError
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp
from mnistlab.stats import mean_sd
from mnistlab.studies.digits import tuning_db
from mnistlab.studies.digits.common import CellContext, mlp_config, test_metrics, to_flat
from mnistlab.studies.digits.tuning_db import (
    Tuning,
    describe_url,
    open_tuning,
    record_digest,
    repair,
    storage_url,
    verified_trials,
)
from mnistlab.train.augment import Augment
from mnistlab.train.checkpoint import save_checkpoint
from mnistlab.train.engine import EpochInfo, Member, Pool, Schedule, train_stack
from mnistlab.train.evaluate import solo

if TYPE_CHECKING:
    import optuna

BATCH_SIZES = (32, 64, 128, 256)
FINISHED = ("COMPLETE", "PRUNED")


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """The search space: Adam learning rate, L2 weight (coupled, on weight matrices), batch."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "l2": trial.suggest_float("l2", 1e-7, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
    }


def trial_seed(seed: int, finished: int) -> int:
    digest = hashlib.sha256(f"tpe:{seed}:{finished}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


AUGMENTS = {
    "none": None,
    "shift1": Augment(shift=1.0),
    "shift2": Augment(shift=2.0),
    "shift2-rot10": Augment(shift=2.0, rotate=10.0),
    "shift2-rot10-scale10": Augment(shift=2.0, rotate=10.0, scale=0.1),
    "elastic": Augment(elastic=34.0, elastic_sigma=4.0),  # Simard et al. 2003's α and σ
    "shift2-rot10-elastic": Augment(shift=2.0, rotate=10.0, elastic=34.0, elastic_sigma=4.0),
}


def recipe(cfg, hp: dict[str, Any]) -> tuple[MLPConfig, Member, str]:
    """What a hyper-parameter dict means: the MLP (batch norm, dropout), a member template (lr,
    L2, dropout, augmentation) and the lr schedule. Keys beyond lr/l2/batch_size are optional
    (the as-specified search leaves them at their defaults)."""
    mcfg = mlp_config(
        cfg, batch_norm=bool(hp.get("batch_norm", False)), dropout=float(hp.get("dropout", 0.0))
    )
    template = Member(
        seed=0,
        state={},
        train=torch.empty(0, dtype=torch.long),
        lr=hp["lr"],
        weight_decay=hp["l2"],
        dropout=mcfg.dropout,
        augment=AUGMENTS[hp.get("augment", "none")],
    )
    return mcfg, template, hp.get("schedule", "constant")


def run_trial(
    ctx: CellContext,
    trial: optuna.Trial,
    hp: dict[str, Any],
    *,
    max_epochs: int | None = None,
    patience: int | None = None,
) -> tuple[dict, bool]:
    """Train the trial's folds as one stack; return (fold scores, pruned?)."""
    cfg = ctx.cfg
    data = ctx.source
    mcfg, t, schedule = recipe(cfg, hp)
    members = [
        replace(
            t,
            seed=cfg.seed + k,
            state=build_mlp(mcfg, seed=cfg.seed + k).state_dict(),
            train=tr,
            evals={"val": va},
            meta={"trial": trial.number, "fold": k},
        )
        for k, (tr, va) in enumerate(stratified_kfold(data.y_train, cfg.folds, seed=cfg.seed))
    ]
    best_acc = [0.0] * len(members)

    def report(info: EpochInfo) -> bool:
        for row in info.rows:
            if info.improved[row["member"]]:
                best_acc[row["member"]] = row["val_acc"]
        trial.report(sum(best_acc) / len(best_acc), info.epoch)
        return trial.should_prune()

    res = train_stack(
        StackedMLP(mcfg),
        members,
        Pool(data.x_train, data.y_train),
        Schedule(
            epochs=max_epochs or cfg.tune_max_epochs,
            batch_size=hp["batch_size"],
            patience=patience or cfg.tune_patience,
            restore_best=True,
            lr_schedule=schedule,
        ),
        trainable={n for n, _ in MLP(mcfg).named_parameters()},
        device=ctx.device,
        prepare=to_flat,
        on_epoch=report,
    )
    fold_acc = [res.rows(k)[res.best_epoch[k] - 1]["val_acc"] for k in range(len(members))]
    return {"fold_acc": fold_acc, "best_epochs": res.best_epoch, "seconds": res.seconds}, (
        res.stopped
    )


def optimise(
    ctx: CellContext,
    tuning: Tuning,
    *,
    budget: int,
    space=suggest,
    label: str = "digits: tune (Optuna TPE, K folds together)",
    **trial_kwargs: Any,
) -> None:
    """Run trials until ``budget`` have finished (COMPLETE or PRUNED); see :func:`_next_trial`
    for how processes sharing the study keep to the budget together."""
    from optuna.trial import TrialState

    study, task, shown = tuning.study, ctx.progress.task(label, budget), 0
    try:
        while True:
            finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]
            task.advance(len(finished) - shown)
            shown = len(finished)
            if len(finished) >= budget:
                break
            trial = _next_trial(tuning, budget, ctx.cfg.seed, len(finished))
            if trial is None:
                continue
            try:
                with tuning_db.heartbeat(tuning, trial.number):
                    hp = space(trial)
                    trial.set_user_attr("drawn", True)  # every parameter stored: retry with them
                    scores, pruned = run_trial(ctx, trial, hp, **trial_kwargs)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)  # re-run with these params on resume
                raise
            _tell(study, trial, scores, pruned)
    except (KeyboardInterrupt, MnistlabError):
        raise
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "optuna.exceptions", "sqlite3")):
            raise tuning_db.db_error(tuning.url, exc) from None
        raise
    finally:
        task.done()


def _next_trial(tuning: Tuning, budget: int, seed: int, finished: int) -> optuna.Trial | None:
    """A new trial, its sampler seeded by the number of finished trials (so a resumed run
    draws what an uninterrupted one would). On a shared study a trial is claimed, then kept
    only if fewer than ``budget`` were claimed before it (by trial number, so every process
    agrees): Optuna's ``MaxTrialsCallback`` counts only after a trial ends, so N processes
    would overshoot the budget by up to N − 1 trials. None: nothing to run now."""
    import optuna
    from optuna.trial import TrialState

    study = tuning.study
    if tuning.shared:
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial re-queued
        if tuning_db.claimed(study.get_trials(deepcopy=False)) >= budget:
            time.sleep(1.0)  # the rest of the budget is running elsewhere
            return None
    study.sampler = optuna.samplers.TPESampler(seed=trial_seed(seed, finished))
    trial = study.ask()
    if not tuning.shared:
        return trial
    if tuning_db.claimed(study.get_trials(deepcopy=False), trial.number) >= budget:
        trial.set_user_attr("over_budget", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    # Concurrent processes see the same history: seed by the (unique) trial number, or two
    # of them would sample the same parameters.
    study.sampler = optuna.samplers.TPESampler(seed=trial_seed(seed, 1_000_000 + trial.number))
    return trial


def _tell(study: optuna.Study, trial: optuna.Trial, scores: dict, pruned: bool) -> None:
    """Store a finished trial with a digest of its scores (verified when read back)."""
    from optuna.trial import TrialState

    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return
    value = sum(scores["fold_acc"]) / len(scores["fold_acc"])
    trial.set_user_attr("fold_acc", scores["fold_acc"])
    trial.set_user_attr("best_epochs", scores["best_epochs"])
    attrs = {"fold_acc": scores["fold_acc"], "best_epochs": scores["best_epochs"]}
    trial.set_user_attr("digest", record_digest(trial.params, value, attrs))
    study.tell(trial, value)


def retrain(
    ctx: CellContext, hp: dict[str, Any], epochs: int, horizon: int | None = None
) -> tuple[MLP, float]:
    """The chosen configuration on every source training image for ``epochs`` epochs (no
    validation data is left to stop on: the folds' mean best epoch count decides; a cosine
    schedule keeps the folds' horizon)."""
    (model,), seconds = retrain_together(ctx, [hp], epochs, horizon)
    return model, seconds


def retrain_together(
    ctx: CellContext,
    hps: list[dict[str, Any]],
    epochs: int,
    horizon: int | None = None,
    seeds: list[int] | None = None,
) -> tuple[list[MLP], float]:
    """Several configurations of one shape and schedule (they may differ in lr, L2, dropout
    rate and augmentation) retrained as one stack, all seeded alike — or configuration ``i``
    with ``seeds[i]`` (init, batch order, dropout and augmentation streams)."""
    cfg, data = ctx.cfg, ctx.source
    recipes = [recipe(cfg, hp) for hp in hps]
    shapes = {
        (replace(m, dropout=0.0), s, hp["batch_size"])
        for (m, _, s), hp in zip(recipes, hps, strict=True)
    }
    if len(shapes) != 1:
        raise ValueError("retrain_together needs one shape, schedule and batch size")
    ((mcfg, schedule, batch),) = shapes
    seeds = seeds or [cfg.seed] * len(hps)
    members = [
        replace(
            t,
            seed=seed,
            state=build_mlp(m, seed=seed).state_dict(),
            train=torch.arange(len(data.y_train)),
            meta={"variant": i, "seed": seed},
        )
        for i, ((m, t, _), seed) in enumerate(zip(recipes, seeds, strict=True))
    ]
    res = train_stack(
        StackedMLP(mcfg),
        members,
        Pool(data.x_train, data.y_train),
        Schedule(epochs=epochs, batch_size=batch, lr_schedule=schedule, horizon=horizon),
        trainable={n for n, _ in MLP(mcfg).named_parameters()},
        device=ctx.device,
        prepare=to_flat,
        progress=ctx.progress,
        description=f"digits: retrain {len(members)} configuration(s) together",
    )
    models = [solo(MLP(m), state) for (m, _, _), state in zip(recipes, res.states, strict=True)]
    return models, res.seconds


def part_tune(ctx: CellContext) -> dict:
    """Tune, then retrain the best configuration on the whole source training set for the
    folds' mean best epoch count (no validation data is left to stop on)."""
    cfg = ctx.cfg
    folder = ctx.out / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    tuning = open_tuning(storage_url(folder, ctx.storage), shared=ctx.storage is not None)
    if not tuning.shared:  # this process is the study's one writer (the run folder's lock)
        try:
            requeued = repair(tuning.study)
        except Exception as exc:
            raise tuning_db.db_error(tuning.url, exc) from None
        if requeued:
            ctx.progress.message(f"digits: tune: re-running {requeued} interrupted trial(s)")
    optimise(ctx, tuning, budget=cfg.trials)
    trials = verified_trials(tuning.study, cfg.folds, describe_url(tuning.url))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        raise MnistlabError("tuning finished no trial; raise --trials")
    best = max(complete, key=lambda t: (t.value, -t.number))
    hp = {k: best.params[k] for k in ("lr", "l2", "batch_size")}
    cv_mean, cv_sd = mean_sd(best.user_attrs["fold_acc"])
    epochs = max(1, round(sum(best.user_attrs["best_epochs"]) / cfg.folds))
    model, seconds = retrain(ctx, hp, epochs)
    save_checkpoint(
        folder / "model.pt",
        {
            "config": model.config.to_dict(),
            "model": model.state_dict(),
            "epoch": epochs,
            "kind": "tuned",
        },
    )
    tuning_db.write_trials(folder / "trials.csv", tuning.study)
    return {
        "best": hp,
        "best_trial": best.number,
        "cv_mean_acc": cv_mean,
        "cv_sd_acc": cv_sd,
        "folds": cfg.folds,
        "fold_acc": best.user_attrs["fold_acc"],
        "retrain_epochs": epochs,
        "n_trials": len(trials),
        "n_complete": len(complete),
        "n_pruned": sum(t.state.name == "PRUNED" for t in trials),
        "trial_params": [
            {"number": t.number, "state": t.state.name, "value": t.value, **t.params}
            for t in trials
        ],
        "seconds_retrain": seconds,
        **test_metrics(model, ctx.source.x_test, ctx.source.y_test),
    }


__all__ = [
    "Tuning",
    "open_tuning",
    "part_tune",
    "repair",
    "storage_url",
    "suggest",
    "verified_trials",
]
