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
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mnistlab import runs
from mnistlab.data import stratified_kfold
from mnistlab.errors import CorruptFileError, MnistlabError
from mnistlab.models.mlp import MLP, StackedMLP, build_mlp
from mnistlab.stats import mean_sd
from mnistlab.studies.digits_common import mlp_config, test_metrics, to_flat
from mnistlab.train.checkpoint import save_checkpoint
from mnistlab.train.engine import EpochInfo, Member, Pool, Schedule, train_stack

if TYPE_CHECKING:
    import optuna

    from mnistlab.studies.digits import Context

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


def _db_error(url: str, exc: Exception) -> MnistlabError:
    where = url.removeprefix("sqlite:///")
    return MnistlabError(
        f"tuning database {where} cannot be used ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:120]}); delete it or re-run with --force to start the tuning "
        "again"
    )


def open_study(url: str, cfg) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(
            study_name=STUDY_NAME,
            storage=url,
            direction="maximize",
            load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
        )
    except Exception as exc:  # sqlalchemy / sqlite errors of a damaged or foreign file
        raise _db_error(url, exc) from None


def repair(study: optuna.Study) -> int:
    """Stale RUNNING trials → FAIL; every FAIL trial not yet retried is enqueued again with
    its parameters. Only safe while this process is the study's one writer (the run folder
    lock). Returns how many trials were re-queued."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for t in trials:
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        elif t.state != TrialState.FAIL:
            continue
        if t.number not in retried and t.params:
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


def run_trial(ctx: Context, trial: optuna.Trial, hp: dict[str, Any]) -> tuple[dict, bool]:
    """Train the trial's folds as one stack; return (fold scores, pruned?)."""
    cfg = ctx.cfg
    data = ctx.source
    mcfg = mlp_config(cfg)
    members = [
        Member(
            seed=cfg.seed + k,
            state=build_mlp(mcfg, seed=cfg.seed + k).state_dict(),
            train=tr,
            lr=hp["lr"],
            weight_decay=hp["l2"],
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
            epochs=cfg.tune_max_epochs,
            batch_size=hp["batch_size"],
            patience=cfg.tune_patience,
            restore_best=True,
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


def optimise(ctx: Context, study: optuna.Study, url: str) -> None:
    """Run trials until ``cfg.trials`` have finished (COMPLETE or PRUNED)."""
    import optuna
    from optuna.trial import TrialState

    cfg = ctx.cfg
    task = ctx.progress.task("digits: tune (Optuna TPE, K folds together)", cfg.trials)
    shown = 0
    try:
        while True:
            finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]
            task.advance(len(finished) - shown)
            shown = len(finished)
            if len(finished) >= cfg.trials:
                break
            study.sampler = optuna.samplers.TPESampler(seed=trial_seed(cfg.seed, len(finished)))
            trial = study.ask()
            try:
                hp = suggest(trial)
                scores, pruned = run_trial(ctx, trial, hp)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)  # re-run with these params on resume
                raise
            if pruned:
                study.tell(trial, state=TrialState.PRUNED)
                continue
            value = sum(scores["fold_acc"]) / len(scores["fold_acc"])
            trial.set_user_attr("fold_acc", scores["fold_acc"])
            trial.set_user_attr("best_epochs", scores["best_epochs"])
            attrs = {"fold_acc": scores["fold_acc"], "best_epochs": scores["best_epochs"]}
            trial.set_user_attr("digest", record_digest(trial.params, value, attrs))
            study.tell(trial, value)
    except (KeyboardInterrupt, MnistlabError):
        raise
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "optuna.exceptions", "sqlite3")):
            raise _db_error(url, exc) from None
        raise
    finally:
        task.done()


def retrain(ctx: Context, hp: dict[str, Any], epochs: int) -> tuple[MLP, float]:
    """The chosen configuration on every source training image for ``epochs`` epochs (no
    validation data is left to stop on: the folds' mean best epoch count decides)."""
    cfg, data = ctx.cfg, ctx.source
    mcfg = mlp_config(cfg)
    res = train_stack(
        StackedMLP(mcfg),
        [
            Member(
                seed=cfg.seed,
                state=build_mlp(mcfg, seed=cfg.seed).state_dict(),
                train=torch.arange(len(data.y_train)),
                lr=hp["lr"],
                weight_decay=hp["l2"],
                meta={"variant": "tuned"},
            )
        ],
        Pool(data.x_train, data.y_train),
        Schedule(epochs=epochs, batch_size=hp["batch_size"]),
        trainable={n for n, _ in MLP(mcfg).named_parameters()},
        device=ctx.device,
        prepare=to_flat,
        progress=ctx.progress,
        description="digits: retrain tuned",
    )
    model = MLP(mcfg)
    model.load_state_dict(res.states[0])
    return model.eval(), res.seconds


def part_tune(ctx: Context) -> dict:
    """Tune, then retrain the best configuration on the whole source training set for the
    folds' mean best epoch count (no validation data is left to stop on)."""
    cfg = ctx.cfg
    folder = ctx.out / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(folder, getattr(ctx, "storage", None))
    study = open_study(url, cfg)
    try:
        requeued = repair(study)
    except Exception as exc:
        raise _db_error(url, exc) from None
    if requeued:
        ctx.progress.message(f"digits: tune: re-running {requeued} interrupted trial(s)")
    optimise(ctx, study, url)
    trials = verified_trials(study, cfg.folds, url.removeprefix("sqlite:///"))
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
    runs.atomic_write_csv(
        folder / "trials.csv",
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


__all__ = ["open_study", "part_tune", "repair", "storage_url", "suggest", "verified_trials"]
