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

import contextlib
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mnistlab import runs
from mnistlab.data import stratified_kfold
from mnistlab.errors import CorruptFileError, MnistlabError
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp
from mnistlab.stats import mean_sd
from mnistlab.studies.digits.common import CellContext, mlp_config, test_metrics, to_flat
from mnistlab.train.augment import Augment
from mnistlab.train.checkpoint import save_checkpoint
from mnistlab.train.engine import EpochInfo, Member, Pool, Schedule, train_stack
from mnistlab.train.evaluate import solo

if TYPE_CHECKING:
    import optuna

STUDY_NAME = "digits-cv"
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


def record_digest(params: dict, value: float, attrs: dict) -> str:
    body = {
        "params": params,
        "value": value,
        "fold_acc": attrs.get("fold_acc"),
        "best_epochs": attrs.get("best_epochs"),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def storage_url(folder: Path, url: str | None) -> str:
    return url or f"sqlite:///{(folder / 'optuna.db').resolve()}"


def describe_url(url: str) -> str:
    """A storage URL for messages: the file of SQLite, the URL without its password."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    scheme, sep, rest = url.partition("://")
    user, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{user.split(':')[0]}{at}{host}" if at else url


def _db_error(url: str, exc: Exception) -> MnistlabError:
    return MnistlabError(
        f"tuning database {describe_url(url)} cannot be used ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:120]}); delete it or re-run with --force to start the tuning "
        "again"
    )


HEARTBEAT = 5  # seconds between a shared-database trial's heartbeats
STALE = 4 * HEARTBEAT  # a RUNNING trial silent this long is failed and re-queued


@dataclass
class Tuning:
    """An Optuna study, where it is stored, and whether other processes share it."""

    study: optuna.Study
    url: str
    shared: bool = False
    storage: Any = None  # the RDBStorage of a shared study (its heartbeats are recorded here)


def open_tuning(url: str, *, shared: bool = False) -> Tuning:
    """The tuning study, created or loaded. ``shared``: several processes use this database
    (a ``--storage`` URL): trials carry heartbeats, a silent one is failed and its parameters
    re-queued by whoever notices, and concurrent creation is retried instead of failing."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    last: Exception | None = None
    for attempt in range(20):
        try:
            storage = None
            if shared:
                storage = optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT,
                    grace_period=STALE,
                    heartbeat_stale_trial_callback=optuna.storages.RetryFailedTrialCallback(
                        max_retry=3
                    ),
                )
            study = optuna.create_study(
                study_name=STUDY_NAME,
                storage=storage or url,
                direction="maximize",
                load_if_exists=True,
                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
            )
            return Tuning(study, url, shared, storage)
        except Exception as exc:  # damaged file, foreign database, or a creation race
            last = exc
            if not shared:
                break
            time.sleep(0.1 * (attempt + 1))  # another process is creating the same study
    raise _db_error(url, last) from None


def _claimed(trials, number: int | None = None) -> int:
    """Trials that count against the budget (finished, running or queued), optionally only
    those numbered below ``number``."""
    states = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
    return sum(
        t.state.name in states
        and (number is None or t.number < number)
        and not t.user_attrs.get("over_budget")
        for t in trials
    )


def repair(study: optuna.Study) -> int:
    """Stale RUNNING trials → FAIL; every FAIL trial not yet retried is enqueued again with
    its parameters. Only safe while this process is the study's one writer (the run folder
    lock). Returns how many trials were re-queued.

    A trial killed while its parameters were being drawn (some stored, some not) is not
    re-queued: a retry would keep the stored ones and draw the rest afresh, which no
    uninterrupted run does. It stays failed, and the next trial draws what an uninterrupted run
    would (the sampler is seeded by the count of finished trials)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for t in trials:
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)  # its process is gone
        elif t.state != TrialState.FAIL or t.user_attrs.get("over_budget"):
            continue
        if t.number not in retried and t.params and t.user_attrs.get("drawn"):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            queued += 1
    return queued


def verified_trials(study: optuna.Study, folds: int, where: str) -> list:
    """Finished trials whose stored numbers are intact and in range."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in FINISHED:
            continue
        if t.state.name == "COMPLETE":
            acc = t.user_attrs.get("fold_acc")
            ok = (
                t.value is not None
                and math.isfinite(t.value)
                and 0 <= t.value <= 1
                and isinstance(acc, list)
                and len(acc) == folds
                and all(isinstance(a, float) and 0 <= a <= 1 for a in acc)
                and t.user_attrs.get("digest") == record_digest(t.params, t.value, t.user_attrs)
            )
            if not ok:
                raise CorruptFileError(
                    where,
                    f"trial {t.number}'s stored result does not verify (value {t.value!r}); "
                    "re-run with --force to tune again",
                )
        out.append(t)
    return out


AUGMENTS = {
    "none": None,
    "shift1": Augment(shift=1.0),
    "shift2": Augment(shift=2.0),
    "shift2-rot10": Augment(shift=2.0, rotate=10.0),
    "shift2-rot10-scale10": Augment(shift=2.0, rotate=10.0, scale=0.1),
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
                with _heartbeat(tuning, trial.number):
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
            raise _db_error(tuning.url, exc) from None
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
        if _claimed(study.get_trials(deepcopy=False)) >= budget:
            time.sleep(1.0)  # the rest of the budget is running elsewhere
            return None
    study.sampler = optuna.samplers.TPESampler(seed=trial_seed(seed, finished))
    trial = study.ask()
    if not tuning.shared:
        return trial
    if _claimed(study.get_trials(deepcopy=False), trial.number) >= budget:
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


@contextlib.contextmanager
def _heartbeat(tuning: Tuning, number: int):
    """Heartbeats of trial ``number`` on a shared study while it runs (none otherwise), through
    the storage's public API: Optuna records them itself only inside ``study.optimize``, and
    the exact resume above needs ask-and-tell."""
    if not tuning.shared:
        yield
        return
    storage = tuning.storage
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
            raise _db_error(tuning.url, exc) from None
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
    _write_trials(folder / "trials.csv", tuning.study)
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


def _write_trials(path: Path, study: optuna.Study) -> None:
    """Every trial, failed and re-queued ones included: the tuning's audit trail."""
    runs.atomic_write_csv(
        path,
        [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                **t.params,
                "fold_acc": t.user_attrs.get("fold_acc"),
                "retry_of": t.user_attrs.get("retry_of"),
            }
            for t in study.get_trials(deepcopy=False)
        ],
    )


__all__ = [
    "Tuning",
    "open_tuning",
    "part_tune",
    "repair",
    "storage_url",
    "suggest",
    "verified_trials",
]
