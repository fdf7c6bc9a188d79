"""What the tutorial-STN studies share: the config, one stack of seeds per model, the
pre-registered primary score and the summaries the report reads.

The STN and the identical CNN without it are trained with the tutorial's settings, every seed
of one model as one stack of the training engine; seed s gives both models the same batch
order, so seeds pair them. Each epoch records eval-mode accuracy on a fixed subset of the
training images and on the whole test set (per kind of image where the pool has kinds), and
for the STN the θ statistics of fixed test images (:class:`~.theta.ThetaProbe`). The STN's
weights of every scored epoch are kept for the θ ablations.

**The primary score** (README, "How the STN verdicts are decided", written before the runs
that decide): per seed and kind, the mean test accuracy over the last ``score_epochs`` epochs;
the STN-vs-CNN verdict is the paired t-test over seeds of that score. The last epoch's
accuracy (what the tutorial prints) is kept beside it as a secondary number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistlab import runs
from mnistlab.config import SEED_MAX, ImageLimits, option
from mnistlab.executors import Cell, host_info
from mnistlab.models.stn import StackedSTN, STNNet, init_stn, to_input
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.stats import mean_ci, pack_correct
from mnistlab.studies.stn.theta import ABLATIONS, ThetaProbe, ablation_accuracy, probe_set
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.engine import EpochInfo, Member, Pool, Schedule, StackResult, train_stack
from mnistlab.train.evaluate import predict, solo
from mnistlab.train.optim import OPTIMIZERS

MODELS = ("stn", "baseline")  # with and without the transformer
# What a model's stack costs relative to the other (an STN step ≈ 2× a CNN step on the 2-core
# CPU: benchmarks/stn_kernels.py); ``run all --jobs`` sizes a cell run elsewhere by it.
STACK_COST = {"stn": 2.0, "baseline": 1.0}
# Seeds per model: from the power calculation on the pilot's spread (README, "How the STN
# verdicts are decided"; benchmarks/stn_seed_pilot.py).
SEEDS = 5


@dataclass(frozen=True)
class STNConfig(ImageLimits):
    """Tutorial defaults: SGD lr 0.01, batch 64, 20 epochs."""

    epochs: int = option(20, "training epochs per model", unit="epochs", lo=1, hi=10_000)
    lr: float = option(0.01, "learning rate", lo=0.0, hi=10.0, open_lo=True)
    batch_size: int = option(64, "mini-batch size", unit="images", lo=1, hi=65_536)
    optimizer: str = option("sgd", "optimizer (the tutorial: plain SGD)", choices=OPTIMIZERS)
    seeds: int = option(
        SEEDS, "repeats with different seeds (init, batch order, dropout)", lo=1, hi=1000
    )
    seed: int = option(0, "first seed; repeats use seed, seed+1, …", lo=0, hi=SEED_MAX)
    train_eval_size: int = option(
        10_000,
        "training images scored in eval mode after each epoch",
        unit="images",
        lo=1,
        hi=10**7,
    )
    score_epochs: int = option(
        5,
        "primary score: mean test accuracy over the last N epochs",
        unit="epochs",
        lo=1,
        hi=10_000,
    )
    theta_images: int = option(
        1000, "test images per kind whose θ is recorded every epoch", cli="", lo=1, hi=10**6
    )

    @property
    def scored(self) -> int:
        """Epochs the primary score averages (all of them in runs shorter than the window)."""
        return min(self.score_epochs, self.epochs)


@dataclass(frozen=True)
class Recipe:
    """How an STN trains: optimizer, learning rate, its schedule over the epochs, and the
    localisation network's step relative to the classifier's (SGD only)."""

    optimizer: str = "sgd"
    lr: float = 0.01
    schedule: str = "constant"  # or "cosine": annealed to 0 over the epochs
    loc_scale: float = 1.0

    def lr_scales(self) -> tuple[tuple[str, float], ...]:
        return () if self.loc_scale == 1.0 else (("localization.", self.loc_scale),
                                                 ("fc_loc.", self.loc_scale))  # fmt: skip


def tutorial_recipe(cfg: STNConfig) -> Recipe:
    """The as-specified studies' recipe: the config's optimizer and lr, constant."""
    return Recipe(cfg.optimizer, cfg.lr)


def acc_key(split: str, kind: str) -> str:
    """The history column of ``split`` accuracy on ``kind`` (``all``: every image)."""
    return f"{split}_acc" if kind == "all" else f"{split}_acc_{kind}"


@dataclass
class StudyData:
    """A cell's data: training images first (``n_train``), then the test images, in one pool;
    the test images' kinds (all 0 when the study has one kind) and their names."""

    pool: Pool
    n_train: int
    test_kinds: torch.Tensor
    kind_names: tuple[str, ...]


# ------------------------------------------------------------------------------ training


def _members(
    model: str, cfg: STNConfig, n_train: int, seeds: list[int], recipe: Recipe
) -> list[Member]:
    members = []
    for seed in seeds:
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))
        members.append(
            Member(
                seed=seed,
                state=init_stn(model == "stn", seed).state_dict(),
                train=torch.arange(n_train),
                lr=recipe.lr,
                evals={"train_eval": order[: cfg.train_eval_size]},
                meta={"model": model, "seed": seed},
                lr_scales=recipe.lr_scales(),
            )
        )
    return members


def scored_weights(out: Path, seed: int, epoch: int) -> Path:
    """Where the STN of ``seed`` is kept after a scored ``epoch`` (for the θ ablations)."""
    return out / "models" / "scored" / f"stn_seed{seed}_epoch{epoch:03d}.pt"


def _stn_hooks(cfg: STNConfig, data: StudyData, members: list[Member], out: Path, device):
    """(θ probe of fixed test images every epoch, the scored epochs' weights kept): what an
    STN stack records beyond its accuracy."""
    idx = probe_set(data.test_kinds, cfg.theta_images)
    probe = ThetaProbe(
        data.pool.x[data.n_train + idx], data.test_kinds[idx], data.kind_names, device
    )
    first_scored = cfg.epochs - cfg.scored + 1

    def keep(info: EpochInfo) -> None:
        if info.epoch >= first_scored:
            for k, m in enumerate(members):
                save_checkpoint(
                    scored_weights(out, m.seed, info.epoch), {"model": info.stack.state(k)}
                )

    return probe, keep


def train_seeds(
    model: str,
    cfg: STNConfig,
    data: StudyData,
    *,
    device: torch.device,
    out: Path,
    progress: Progress,
    description: str,
    recipe: Recipe | None = None,
    seeds: list[int] | None = None,
    name: str | None = None,
) -> StackResult:
    """Every seed of one model (``stn`` or ``baseline``) as one stack — or ``seeds`` of it,
    stored under ``name`` — with the tutorial's or another ``recipe``; the STN's θ probed every
    epoch and its weights kept after every scored epoch."""
    use_stn, name = model == "stn", name or model
    recipe = recipe or tutorial_recipe(cfg)
    seeds = seeds if seeds is not None else [cfg.seed + s for s in range(cfg.seeds)]
    members = _members(model, cfg, data.n_train, seeds, recipe)
    probe, keep = _stn_hooks(cfg, data, members, out, device) if use_stn else (None, None)

    result = train_stack(
        StackedSTN(use_stn, device),
        members,
        data.pool,
        Schedule(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            optimizer=recipe.optimizer,
            lr_schedule=recipe.schedule,
        ),
        trainable={name for name, _ in STNNet(use_stn).named_parameters()},
        device=device,
        prepare=to_input,
        shared_evals={"test": torch.arange(data.n_train, len(data.pool.y))},
        checkpoint=out / "checkpoints" / f"{name}.pt",
        progress=progress,
        description=description,
        on_epoch=keep,
        measure=probe,
    )
    for m, state in zip(members, result.states, strict=True):
        save_checkpoint(
            out / "models" / f"{model}_seed{m.seed}.pt",
            {"model": state, "use_stn": use_stn, "seed": m.seed},
        )
    runs.atomic_write_csv(out / f"history_{name}.csv", result.history)
    return result


def model_cells(
    cfg: STNConfig,
    out: Path,
    data: Callable[[], StudyData],
    device: torch.device,
    progress: Progress | None,
    label: str,
) -> list[Cell]:
    """One cell per model: its seeds as one stack, the result in ``cells/<model>.json``
    (histories) and ``models/`` (weights). ``data`` loads the pool inside the cell, so a
    cell can run in another process."""
    cells = []
    for m in MODELS:
        path = out / "cells" / f"{m}.json"

        def run_cell(m: str = m, path: Path = path) -> None:
            res = train_seeds(
                m,
                cfg,
                data(),
                device=device,
                out=out,
                progress=progress or default_progress(),
                description=f"{label}: {m} × {cfg.seeds} seed(s)",
            )
            runs.write_json(
                path,
                {
                    "history": res.history,
                    "best_epoch": res.best_epoch,
                    "epochs_run": res.epochs_run,
                    "seconds": res.seconds,
                    "where": host_info(),
                },
            )

        gpus = 1.0 if device.type == "cuda" else 0.0
        cells.append(Cell(m, run_cell, done=path.is_file, gpus=gpus, weight=STACK_COST[m]))
    return cells


def load_cells(cfg: STNConfig, out: Path) -> dict[str, StackResult]:
    """The finished model cells as stack results (weights from ``models/``)."""
    results = {}
    for m in MODELS:
        saved = runs.read_finished(out / "cells" / f"{m}.json")
        states = [
            load_checkpoint(out / "models" / f"{m}_seed{cfg.seed + s}.pt")["model"]
            for s in range(cfg.seeds)
        ]
        results[m] = StackResult(
            saved["history"], states, saved["best_epoch"], saved["epochs_run"], saved["seconds"]
        )
    return results


def trained_model(result: StackResult, k: int, use_stn: bool, device: torch.device) -> STNNet:
    return solo(STNNet(use_stn), result.states[k]).to(device)


def correct_on(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device) -> str:
    """Which test images ``model`` classifies correctly, packed (for McNemar in the report)."""
    preds = predict(model, images, lambda x: to_input(x, device), batch=2048).argmax(1)
    return pack_correct((preds == labels).numpy())


# ------------------------------------------------------------------------------ summaries


def _scores(rows: list[dict[str, Any]], key: str, scored: int) -> tuple[float, float, float]:
    """(primary: mean over the last ``scored`` epochs, last epoch, best epoch) of ``key``."""
    values = [r[key] for r in rows]
    return sum(values[-scored:]) / len(values[-scored:]), values[-1], max(values)


def summarise_model(result: StackResult, kinds: tuple[str, ...], scored: int) -> dict[str, Any]:
    """Per kind (``all`` first): the primary score, the last and the best epoch's test
    accuracy and the primary train accuracy, mean ± 95 % CI over seeds and per seed; every
    seed's curves; the stack's time."""
    rows = [result.rows(k) for k in range(len(result.states))]
    out: dict[str, Any] = {
        "seeds": [h[0]["seed"] for h in rows],
        "epochs": len(rows[0]),
        "stack_seconds": result.seconds,
        "stack_epoch_seconds": result.seconds / len(rows[0]),
    }
    for name in ("primary", "final", "best", "train_primary"):
        out[name], out[f"per_seed_{name}"] = {}, {}
    for kind in ("all", *kinds):
        test = [_scores(h, acc_key("test", kind), scored) for h in rows]
        train = [_scores(h, acc_key("train_eval", kind), scored)[0] for h in rows]
        for i, name in enumerate(("primary", "final", "best")):
            out[f"per_seed_{name}"][kind] = [t[i] for t in test]
            out[name][kind] = mean_ci([t[i] for t in test])
        out["per_seed_train_primary"][kind] = train
        out["train_primary"][kind] = mean_ci(train)
    out["curves_by_seed"] = {
        acc_key(split, kind): [[r[acc_key(split, kind)] for r in h] for h in rows]
        for split in ("train_eval", "test")
        for kind in ("all", *kinds)
    }
    return out


def theta_series(result: StackResult) -> dict[str, list[list[float]]]:
    """Every ``theta_*`` history column, per seed and epoch (the STN's θ on fixed images)."""
    rows = [result.rows(k) for k in range(len(result.states))]
    cols = sorted(c for c in rows[0][0] if c.startswith("theta_"))
    return {c: [[r[c] for r in h] for h in rows] for c in cols}


def ablations(cfg: STNConfig, out: Path, data: StudyData, device: torch.device) -> dict:
    """Every seed's STN, at each scored epoch, with θ replaced as :data:`ABLATIONS` say:
    per ablation and kind, each seed's test accuracy averaged over the scored epochs (the
    primary score's window, so the ablations and the verdict read the same weights)."""
    x = data.pool.x[data.n_train :]
    y = data.pool.y[data.n_train :]
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    epochs = range(cfg.epochs - cfg.scored + 1, cfg.epochs + 1)
    total: dict[str, torch.Tensor] = {}
    for e in epochs:
        states = [load_checkpoint(scored_weights(out, s, e))["model"] for s in seeds]
        acc = ablation_accuracy(states, x, y, data.test_kinds, device=device, seed=cfg.seed)
        for name, a in acc.items():
            total[name] = total.get(name, 0) + a / len(epochs)
    counts = torch.bincount(data.test_kinds, minlength=len(data.kind_names)).double()
    per_seed: dict[str, dict[str, list[float]]] = {}
    for name in ABLATIONS:
        a = total[name].double()
        by_kind = {kind: a[:, j].tolist() for j, kind in enumerate(data.kind_names)}
        if "all" not in by_kind:
            by_kind["all"] = ((a * counts).sum(1) / counts.sum()).tolist()
        per_seed[name] = by_kind
    return {"variants": list(ABLATIONS), "epochs": list(epochs), "per_seed": per_seed}


def curves_mean(summary: dict[str, Any]) -> dict[str, list[float]]:
    """The seeds' mean curve of every accuracy column (for tables and summary lines)."""
    return {k: np.mean(v, axis=0).tolist() for k, v in summary["curves_by_seed"].items()}
