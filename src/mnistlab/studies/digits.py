"""Digits 0–4 → 5–9: the 5×100 MLP, CV tuning, batch norm, dropout (part 1, here), and the
transfer variants (part 2, :mod:`mnistlab.studies.digits_transfer`).

Each part writes its own result file under ``<out>/<part>/`` (atomically) and is skipped when
that file exists, so parts can run alone (``--part``), depend on one another (batch norm needs
the tuned hyper-parameters, transfer needs the tuned model) and resume after an interruption.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab import runs
from mnistlab.data import (
    check_disjoint,
    load_mnist,
    parse_digits,
    select_digits,
    stratified_kfold,
    stratified_split,
)
from mnistlab.errors import MnistlabError
from mnistlab.models.mlp import MLP, MLPConfig, build_mlp
from mnistlab.models.state import load_state_strict
from mnistlab.progress import Progress
from mnistlab.stats import mean_sd
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.fit import FitConfig, fit
from mnistlab.train.loop import evaluate

STUDY = "digits"
PARTS = ("pretrain", "tune", "batchnorm", "dropout", "transfer", "cache", "reuse4", "unfreeze")
VARIANTS = ("scratch", "frozen5", "cached5", "reuse4", "unfreeze2")
VARIANT_LABELS = {
    "scratch": "from scratch (no transfer)",
    "frozen5": "5 frozen reused layers",
    "cached5": "5 frozen layers, cached outputs",
    "reuse4": "4 frozen reused layers",
    "unfreeze2": "best + top two unfrozen",
}


@dataclass(frozen=True)
class DigitsConfig:
    """Every knob of the study; the results folder is the hash of all of them."""

    source_digits: str = "0-4"
    target_digits: str = "5-9"
    seed: int = 0
    # Part 1: baseline pre-training
    val_fraction: float = 0.1
    lr: float = 1e-3
    l2: float = 1e-5
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 5
    checkpoint_every: int = 5
    # Part 1: cross-validated tuning (Optuna TPE)
    trials: int = 12
    folds: int = 3
    tune_max_epochs: int = 12
    tune_patience: int = 3
    # Part 1: batch norm and dropout
    target_val_acc: float = 0.98
    dropout_rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    # Part 2: transfer
    per_digit: int = 100
    val_per_digit: int = 200
    transfer_seeds: int = 5
    transfer_batch_size: int = 50
    # The source-tuned lr (~1e-3) left the frozen heads still improving at a 300-epoch cap;
    # 1e-2 lets every variant stop by patience. One lr and one stopping rule for all variants.
    transfer_lr: float = 1e-2
    transfer_max_epochs: int = 500
    transfer_patience: int = 20
    transfer_min_delta: float = 1e-3  # val-loss improvement that resets the patience counter
    unfreeze_lr_factor: float = 0.1
    # Tests only: keep the first N images of each split (None = all)
    limit: int | None = None


@dataclass
class Data:
    x_train: torch.Tensor  # float [N, 784] in [0, 1]
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(digits: str, limit: int | None = None) -> Data:
    """The images of ``digits`` as flat floats with labels remapped to 0..k-1."""
    parts = []
    for split in ("train", "test"):
        images, labels = load_mnist(split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        idx, y = select_digits(labels, digits)
        parts += [images[idx].reshape(len(idx), -1).float().div_(255.0), y]
    return Data(*parts)


def macro_precision(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    from sklearn.metrics import precision_score

    return float(precision_score(y_true.numpy(), y_pred.numpy(), average="macro", zero_division=0))


def _test_metrics(model: nn.Module, data: Data) -> dict[str, float]:
    ev = evaluate(model, data.x_test, data.y_test)
    return {
        "test_acc": ev.acc,
        "test_precision": macro_precision(data.y_test, ev.preds),
        "test_loss": ev.loss,
    }


def _fit_cfg(cfg: DigitsConfig, hp: dict[str, Any], **over: Any) -> FitConfig:
    base = FitConfig(
        lr=hp["lr"],
        l2=hp["l2"],
        batch_size=hp["batch_size"],
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
    )
    return replace(base, **over)


def _source_split(cfg: DigitsConfig, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    return stratified_split(data.y_train, cfg.val_fraction, seed=cfg.seed)


def _n_classes(cfg: DigitsConfig) -> int:
    return len(parse_digits(cfg.source_digits))


def load_model(path: Path | str, expect: MLPConfig | None = None) -> MLP:
    """Rebuild an MLP from a standalone checkpoint (``best.pt``, ``final.pt``, ``epoch_N.pt``)."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise MnistlabError(f"{path} is not an mnistlab MLP checkpoint")
    try:
        config = MLPConfig.from_dict(state["config"])
    except TypeError:
        raise MnistlabError(f"{path} is a checkpoint of another architecture") from None
    if expect is not None and config != expect:
        raise MnistlabError(f"{path} holds a {config} model, expected {expect}")
    model = MLP(config)
    load_state_strict(model, state["model"], str(path))
    return model.eval()


# ---------------------------------------------------------------------------------- part 1


def _part_pretrain(cfg: DigitsConfig, data: Data, out: Path, progress: Progress) -> dict:
    folder = out / "pretrain"
    tr, va = _source_split(cfg, data)
    mcfg = MLPConfig(n_classes=_n_classes(cfg))
    model = build_mlp(mcfg, seed=cfg.seed)
    hp = {"lr": cfg.lr, "l2": cfg.l2, "batch_size": cfg.batch_size}
    res = fit(
        model,
        (data.x_train[tr], data.y_train[tr]),
        (data.x_train[va], data.y_train[va]),
        _fit_cfg(cfg, hp),
        seed=cfg.seed,
        ckpt_dir=folder / "checkpoints",
        checkpoint_every=cfg.checkpoint_every,
        model_config=mcfg.to_dict(),
        progress=progress,
        description="digits: pretrain baseline",
    )
    runs.atomic_write_csv(folder / "history.csv", res.history)
    return {
        "hyperparameters": hp,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds": res.seconds,
        **_test_metrics(model, data),
        "checkpoints": sorted(p.name for p in (folder / "checkpoints").glob("*.pt")),
    }


def _cv_score(cfg: DigitsConfig, data: Data, hp: dict, trial=None) -> dict:
    """Stratified K-fold: train on K-1 folds, early-stop and score on the held-out fold."""
    accs, epochs = [], []
    folds = stratified_kfold(data.y_train, cfg.folds, seed=cfg.seed)
    fcfg = _fit_cfg(
        cfg, hp, max_epochs=cfg.tune_max_epochs, patience=cfg.tune_patience, eval_train=False
    )
    for k, (tr, va) in enumerate(folds):
        model = build_mlp(MLPConfig(n_classes=_n_classes(cfg)), seed=cfg.seed + k)
        val = (data.x_train[va], data.y_train[va])
        res = fit(model, (data.x_train[tr], data.y_train[tr]), val, fcfg, seed=cfg.seed + k)
        accs.append(evaluate(model, *val).acc)
        epochs.append(res.best_epoch)
        if trial is not None:
            import optuna

            trial.report(sum(accs) / len(accs), k)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return {"fold_acc": accs, "best_epochs": epochs}


def _part_tune(cfg: DigitsConfig, data: Data, out: Path, progress: Progress) -> dict:
    import optuna

    folder = out / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(folder / 'optuna.db').resolve()}"
    study = optuna.create_study(
        study_name="digits-cv",
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0),
    )

    def objective(trial: optuna.Trial) -> float:
        hp = {
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "l2": trial.suggest_float("l2", 1e-7, 1e-3, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
        }
        res = _cv_score(cfg, data, hp, trial)
        trial.set_user_attr("fold_acc", res["fold_acc"])
        trial.set_user_attr("best_epochs", res["best_epochs"])
        return sum(res["fold_acc"]) / len(res["fold_acc"])

    finished = [t for t in study.trials if t.state.is_finished()]
    remaining = max(0, cfg.trials - len(finished))
    task = progress.task("digits: tune (Optuna TPE, K-fold)", cfg.trials)
    task.advance(cfg.trials - remaining)
    if remaining:
        study.optimize(objective, n_trials=remaining, callbacks=[lambda s, t: task.advance(1)])
    task.done()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise MnistlabError("tuning finished no trial; raise --trials")
    best = study.best_trial
    hp = {"lr": best.params["lr"], "l2": best.params["l2"], "batch_size": best.params["batch_size"]}
    cv_mean, cv_sd = mean_sd(best.user_attrs["fold_acc"])
    epochs = max(1, round(sum(best.user_attrs["best_epochs"]) / cfg.folds))
    # Retrain on the whole source training set for the CV-chosen number of epochs (no
    # validation data is left to early-stop on, so the folds' best epochs decide).
    mcfg = MLPConfig(n_classes=_n_classes(cfg))
    model = build_mlp(mcfg, seed=cfg.seed)
    train = (data.x_train, data.y_train)
    # No validation data is left to early-stop on: train exactly `epochs` epochs, keep the last.
    fcfg = replace(
        _fit_cfg(cfg, hp),
        max_epochs=epochs,
        patience=epochs + 1,
        eval_train=False,
        restore_best=False,
    )
    res = fit(
        model,
        train,
        train,
        fcfg,
        seed=cfg.seed,
        progress=progress,
        description="digits: retrain tuned",
    )
    save_checkpoint(
        folder / "model.pt",
        {
            "config": mcfg.to_dict(),
            "model": model.state_dict(),
            "epoch": res.epochs_run,
            "kind": "tuned",
        },
    )
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            **t.params,
            "fold_acc": t.user_attrs.get("fold_acc"),
        }
        for t in study.trials
    ]
    runs.atomic_write_csv(folder / "trials.csv", trials)
    return {
        "best": hp,
        "cv_mean_acc": cv_mean,
        "cv_sd_acc": cv_sd,
        "folds": cfg.folds,
        "fold_acc": best.user_attrs["fold_acc"],
        "retrain_epochs": epochs,
        "n_trials": len(study.trials),
        "n_complete": len(complete),
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "seconds_retrain": res.seconds,
        **_test_metrics(model, data),
    }


def _epochs_to(history: list[dict], target: float) -> int | None:
    return next((int(r["epoch"]) for r in history if r["val_acc"] >= target), None)


def _train_variant(
    cfg: DigitsConfig,
    data: Data,
    hp: dict,
    mcfg: MLPConfig,
    progress: Progress,
    name: str,
    folder: Path,
) -> dict:
    """Train one Part-1 variant on the fixed split; history CSV + summary."""
    tr, va = _source_split(cfg, data)
    model = build_mlp(mcfg, seed=cfg.seed)
    res = fit(
        model,
        (data.x_train[tr], data.y_train[tr]),
        (data.x_train[va], data.y_train[va]),
        _fit_cfg(cfg, hp),
        seed=cfg.seed,
        progress=progress,
        description=f"digits: {name}",
    )
    runs.atomic_write_csv(folder / f"history_{name}.csv", res.history)
    best = res.history[res.best_epoch - 1]
    return {
        "history": res.history,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds": res.seconds,
        "epochs_to_target": _epochs_to(res.history, cfg.target_val_acc),
        "best_val_acc": max(r["val_acc"] for r in res.history),
        "gap_acc_at_best": best["train_eval_acc"] - best["val_acc"],
        "gap_loss_at_best": best["val_loss"] - best["train_eval_loss"],
        **_test_metrics(model, data),
    }


def _part_batchnorm(cfg, data, out, progress, deps) -> dict:
    hp = deps("tune")["best"]
    folder = out / "batchnorm"
    result = {"hyperparameters": hp, "target_val_acc": cfg.target_val_acc}
    for name, bn in (("plain", False), ("batchnorm", True)):
        mcfg = MLPConfig(n_classes=_n_classes(cfg), batch_norm=bn)
        result[name] = _train_variant(cfg, data, hp, mcfg, progress, name, folder)
    return result


def _part_dropout(cfg, data, out, progress, deps) -> dict:
    hp = deps("tune")["best"]
    plain = deps("batchnorm")["plain"]  # the tuned model without BN: the gap to close
    folder = out / "dropout"
    result = {"hyperparameters": hp, "rates": {"0.0": plain}}
    for rate in cfg.dropout_rates:
        mcfg = MLPConfig(n_classes=_n_classes(cfg), dropout=rate)
        result["rates"][str(rate)] = _train_variant(
            cfg, data, hp, mcfg, progress, f"dropout_{rate}", folder
        )
    return result


# ------------------------------------------------------------------------------- orchestration

PART_VARIANTS = {
    "transfer": ("frozen5", "scratch"),
    "cache": ("cached5",),
    "reuse4": ("reuse4",),
    "unfreeze": ("unfreeze2",),
}


def run(
    config: DigitsConfig,
    out_dir: Path | str,
    *,
    parts: tuple[str, ...] = PARTS,
    progress: Progress | None = None,
    force: bool = False,
) -> dict:
    """Run the requested parts (and what they depend on); return every part's results.

    Args:
        config: the study configuration; ``out_dir`` should be ``results/digits/<hash>``.
        parts: any of :data:`PARTS`; dependencies run automatically.
        force: recompute parts whose results already exist.
    """
    progress = progress or Progress()
    out = Path(out_dir)
    src, tgt = parse_digits(config.source_digits), parse_digits(config.target_digits)
    check_disjoint(src, tgt)
    if len(src) != len(tgt):
        raise MnistlabError("source and target ranges must have the same number of digits")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise MnistlabError(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    if force:
        runs.clear_run(out)
    if not (out / "config.json").exists():
        runs.start_run(out, config, seed=config.seed)
    _check_counts(config)
    data_cache: dict[str, Data] = {}

    def source_data() -> Data:
        if "src" not in data_cache:
            data_cache["src"] = load_digits(config.source_digits, config.limit)
        return data_cache["src"]

    results: dict[str, Any] = {}

    def deps(name: str) -> dict:
        """Result of part/variant ``name``: from disk if finished, else computed now."""
        if name in results:
            return results[name]
        sub = "transfer" if name in VARIANTS else name
        path = out / sub / (f"{name}.json" if name in VARIANTS else "result.json")
        if path.is_file():
            results[name] = runs.read_json(path)
            return results[name]
        t0 = time.perf_counter()
        if name == "pretrain":
            res = _part_pretrain(config, source_data(), out, progress)
        elif name == "tune":
            res = _part_tune(config, source_data(), out, progress)
        elif name == "batchnorm":
            res = _part_batchnorm(config, source_data(), out, progress, deps)
        elif name == "dropout":
            res = _part_dropout(config, source_data(), out, progress, deps)
        else:
            from mnistlab.studies import digits_transfer  # part 2 builds on this module

            res = digits_transfer.part_variant(name, config, out, progress, deps)
        res["wall_seconds"] = time.perf_counter() - t0
        runs.atomic_write_json(path, res)
        progress.message(f"digits: {name} done in {res['wall_seconds']:.1f} s")
        results[name] = res
        return res

    for part in parts:
        for name in PART_VARIANTS.get(part, (part,)):
            deps(name)
    from mnistlab.studies import digits_figures

    digits_figures.write_all(out)
    if set(parts) == set(PARTS):
        runs.finish_run(out, summarise(results))
    return results


def _check_counts(cfg: DigitsConfig) -> None:
    """Per-digit counts above what exists fail before any training starts."""
    _, labels = load_mnist("train")
    if cfg.limit is not None:
        labels = labels[: cfg.limit]
    _, y = select_digits(labels, cfg.target_digits)
    counts = torch.bincount(y, minlength=5)
    need = cfg.per_digit + cfg.val_per_digit
    digits = parse_digits(cfg.target_digits)
    for d, c in zip(digits, counts.tolist(), strict=True):
        if c < need:
            raise MnistlabError(
                f"digit {d} has only {c} training images; {cfg.per_digit} per digit for training "
                f"+ {cfg.val_per_digit} for validation = {need} needed"
            )


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
