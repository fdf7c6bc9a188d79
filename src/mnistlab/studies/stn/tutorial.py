"""Study: the tutorial spatial transformer on MNIST — accuracy vs plain CNN, what it learned.

The STN and the identical classifier without it are trained with the tutorial's settings, every
seed of one model as one stack of the training engine (seeds pair the two models: a seed gives
both the same batch order). Test (and train) accuracy is recorded every epoch. The first seed's
STN is then inspected: every test image's θ is decomposed into rotation, scales, shear and
translation, and the report's list of learned deformations is derived from those distributions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistlab import runs, schemas
from mnistlab.config import SEED_MAX, ImageLimits, option
from mnistlab.data import COUNTS, load_mnist
from mnistlab.executors import Cell, host_info
from mnistlab.models.stn import StackedSTN, STNNet, init_stn, to_input
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.stats import mean_ci, pack_correct
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.engine import Member, Pool, Schedule, StackResult, train_stack
from mnistlab.train.evaluate import predict, solo
from mnistlab.train.optim import OPTIMIZERS

STUDY = "stn"
MODELS = ("stn", "baseline")  # with and without the transformer
# What a model's stack costs relative to the other (an STN step ≈ 2× a CNN step on the 2-core
# CPU: benchmarks/stn_kernels.py); ``run all --jobs`` sizes a cell run elsewhere by it.
STACK_COST = {"stn": 2.0, "baseline": 1.0}


@dataclass(frozen=True)
class STNConfig(ImageLimits):
    """Tutorial defaults: SGD lr 0.01, batch 64, 20 epochs."""

    epochs: int = option(20, "training epochs per model", unit="epochs", lo=1, hi=10_000)
    lr: float = option(0.01, "learning rate", lo=0.0, hi=10.0, open_lo=True)
    batch_size: int = option(64, "mini-batch size", unit="images", lo=1, hi=65_536)
    optimizer: str = option("sgd", "optimizer (the tutorial: plain SGD)", choices=OPTIMIZERS)
    seeds: int = option(
        3, "repeats with different seeds (init, batch order, dropout)", lo=1, hi=1000
    )
    seed: int = option(0, "first seed; repeats use seed, seed+1, …", lo=0, hi=SEED_MAX)
    train_eval_size: int = option(
        10_000,
        "training images scored in eval mode after each epoch",
        unit="images",
        lo=1,
        hi=10**7,
    )


# ------------------------------------------------------------------------------ θ analysis


def decompose_theta(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split θ = [A | t] with A = R(rotation) · Shear(shear) · diag(scale_x, scale_y).

    θ maps output to input coordinates (``affine_grid``): scale 0.5 means the output shows half
    the input's extent, i.e. a 2× zoom-in; a rotation of +φ shows the input turned by −φ.
    """
    a, b = theta[:, 0, 0], theta[:, 0, 1]
    c, d = theta[:, 1, 0], theta[:, 1, 1]
    scale_x = torch.sqrt(a * a + c * c)
    rotation = torch.atan2(c, a)
    m = (a * b + c * d) / scale_x  # R^T A = [[sx, m], [0, sy]]
    scale_y = (a * d - b * c) / scale_x
    return {
        "rotation_deg": torch.rad2deg(rotation),
        "scale_x": scale_x,
        "scale_y": scale_y,
        "shear": m / scale_y,
        "tx": theta[:, 0, 2],
        "ty": theta[:, 1, 2],
    }


def compose_theta(rotation_deg, scale_x, scale_y, shear, tx, ty) -> torch.Tensor:
    """Inverse of :func:`decompose_theta` (used by tests and synthetic checks)."""
    r = math.radians(rotation_deg)
    rot = torch.tensor([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    sh = torch.tensor([[1.0, shear], [0.0, 1.0]])
    a = rot @ sh @ torch.diag(torch.tensor([float(scale_x), float(scale_y)]))
    return torch.cat([a, torch.tensor([[float(tx)], [float(ty)]])], dim=1).unsqueeze(0)


# Thresholds above which a deformation counts as "used" by the STN, as deviation from identity
# at the 90th percentile of test images: rotation 5°, scale 5 %, shear 0.05, translation 0.05
# (normalised units; 0.05 × 14 px ≈ 0.7 px).
THRESHOLDS = {"rotation": 5.0, "zoom": 0.05, "anisotropy": 0.05, "shear": 0.05, "translation": 0.05}


def deformation_stats(parts: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per deformation type: median and 90th-percentile deviation from identity."""
    iso = torch.sqrt(parts["scale_x"].abs() * parts["scale_y"].abs())
    dev = {
        "rotation": parts["rotation_deg"].abs(),
        "zoom": (iso - 1).abs(),
        "anisotropy": (parts["scale_x"] / parts["scale_y"] - 1).abs(),
        "shear": parts["shear"].abs(),
        "translation": torch.sqrt(parts["tx"] ** 2 + parts["ty"] ** 2),
    }
    out = {}
    for name, values in dev.items():
        q = torch.quantile(values.double(), torch.tensor([0.5, 0.9], dtype=torch.double))
        out[name] = {
            "median": float(q[0]),
            "p90": float(q[1]),
            "max": float(values.max()),
            "threshold": THRESHOLDS[name],
            "learned": bool(q[1] > THRESHOLDS[name]),
        }
    out["zoom"]["mean_scale"] = float(iso.mean())
    out["rotation"]["mean_signed_deg"] = float(parts["rotation_deg"].mean())
    return out


def thetas_and_outputs(
    model: STNNet, images: torch.Tensor, device: torch.device, batch: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ for every image, and the STN's warped images as uint8 (for figures)."""
    warped, thetas = predict(
        model, images, lambda x: to_input(x, device), batch=batch, call=model.transform
    )
    return thetas, (warped.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------ training


def train_seeds(
    model: str,
    cfg: Any,
    pool: Pool,
    n_train: int,
    *,
    device: torch.device,
    out: Path,
    progress: Progress,
    description: str,
) -> StackResult:
    """Every seed of one model (``stn`` or ``baseline``) as one stack.

    ``pool`` holds the training images first (``n_train`` of them), then the test images. Each
    epoch records the running train loss, eval-mode accuracy on a fixed per-seed subset of the
    training images (``train_eval``) and on the whole test set (``test``), overall and per
    kind when the pool has kinds.
    """
    use_stn = model == "stn"
    members = []
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))
        members.append(
            Member(
                seed=seed,
                state=init_stn(use_stn, seed).state_dict(),
                train=torch.arange(n_train),
                lr=cfg.lr,
                evals={"train_eval": order[: cfg.train_eval_size]},
                meta={"model": model, "seed": seed},
            )
        )
    result = train_stack(
        StackedSTN(use_stn, device),
        members,
        pool,
        Schedule(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer),
        trainable={name for name, _ in STNNet(use_stn).named_parameters()},
        device=device,
        prepare=to_input,
        shared_evals={"test": torch.arange(n_train, len(pool.y))},
        checkpoint=out / "checkpoints" / f"{model}.pt",
        progress=progress,
        description=description,
    )
    for m, state in zip(members, result.states, strict=True):
        save_checkpoint(
            out / "models" / f"{model}_seed{m.seed}.pt",
            {"model": state, "use_stn": use_stn, "seed": m.seed},
        )
    runs.atomic_write_csv(out / f"history_{model}.csv", result.history)
    return result


def largest_deformations(parts: dict[str, torch.Tensor], k: int = 6) -> dict[str, list[int]]:
    """Per deformation type, the ``k`` test images the STN deforms most that way."""
    iso = torch.sqrt(parts["scale_x"].abs() * parts["scale_y"].abs())
    scores = {
        "rotation": parts["rotation_deg"].abs(),
        "zoom": (iso.log()).abs(),
        "shear": parts["shear"].abs(),
        "translation": torch.sqrt(parts["tx"] ** 2 + parts["ty"] ** 2),
    }
    return {name: torch.argsort(v, descending=True)[:k].tolist() for name, v in scores.items()}


def _numpy(parts: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {name: v.numpy() for name, v in parts.items()}


def trained_model(result: StackResult, k: int, use_stn: bool, device: torch.device) -> STNNet:
    return solo(STNNet(use_stn), result.states[k]).to(device)


def correct_on(model: STNNet, images: torch.Tensor, labels: torch.Tensor, device) -> str:
    """Which test images ``model`` classifies correctly, packed (for McNemar in the report)."""
    preds = predict(model, images, lambda x: to_input(x, device), batch=2048).argmax(1)
    return pack_correct((preds == labels).numpy())


def summarise_runs(result: StackResult, kinds: tuple[str, ...] = ()) -> dict[str, Any]:
    """Final and best test accuracy (mean ± 95% CI over seeds), per-seed values for paired
    tests, mean accuracy curves (overall and per kind) and the stack's time per epoch."""
    per_seed = [result.rows(k) for k in range(len(result.states))]
    final = [h[-1]["test_acc"] for h in per_seed]
    best = [max(r["test_acc"] for r in h) for h in per_seed]
    best_epoch = [max(h, key=lambda r: r["test_acc"])["epoch"] for h in per_seed]
    epochs = len(per_seed[0])
    return {
        "final_test_acc": mean_ci(final),
        "best_test_acc": mean_ci(best),
        "best_epoch": mean_ci(best_epoch),
        "per_seed_final": final,
        "per_seed_best": best,
        "seeds": [r["seed"] for r in (h[0] for h in per_seed)],
        "epochs": epochs,
        "stack_seconds": result.seconds,
        "stack_epoch_seconds": result.seconds / epochs,
        "curves": {
            f"{split}_acc{suffix}": np.mean(
                [[r[f"{split}_acc{suffix}"] for r in h] for h in per_seed], axis=0
            ).tolist()
            for split in ("train_eval", "test")
            for suffix in ("", *(f"_{k}" for k in kinds))
        },
    }


def _limited(images, labels, limit):
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def model_cells(
    cfg: Any,
    out: Path,
    data: Callable[[], tuple[Pool, int]],
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
            pool, n_train = data()
            res = train_seeds(
                m,
                cfg,
                pool,
                n_train,
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


def load_cells(cfg: Any, out: Path) -> dict[str, StackResult]:
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


def _data(config: STNConfig, data_dir: Path | str | None) -> tuple[Pool, int]:
    x_tr, y_tr = _limited(*load_mnist("train", data_dir), config.limit_train)
    x_te, y_te = _limited(*load_mnist("test", data_dir), config.limit_test)
    return Pool(torch.cat([x_tr, x_te]), torch.cat([y_tr, y_te])), len(y_tr)


def cells(
    config: STNConfig,
    out: Path,
    data_dir: Path | str | None,
    device: torch.device,
    progress: Progress | None,
) -> list[Cell]:
    """The study's cells: built here, or by a worker process that runs one of them
    (``run all --jobs``), which is why this is a module-level function of plain arguments."""
    return model_cells(config, out, partial(_data, config, data_dir), device, progress, "stn")


def run(
    config: STNConfig,
    out_dir: Path | str,
    env: Env | None = None,
) -> schemas.STNMetrics:
    """Train STN and baseline over seeds, analyse θ; write results/figures to ``out_dir``."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config, run_: StudyRun) -> dict:
    """The study's work inside its opened run folder; returns its metrics."""
    from mnistlab.figures import stn as figures

    out, device, executor = run_.out, run_.device, run_.executor
    t_start = time.perf_counter()
    executor.run(cells(config, out, run_.data_dir, device, run_.cell_progress), root=out)
    results = load_cells(config, out)
    x_te, y_te = _limited(*load_mnist("test", run_.data_dir), config.limit_test)
    model = trained_model(results["stn"], 0, True, device)
    thetas, warped = thetas_and_outputs(model, x_te, device)
    parts = decompose_theta(thetas)
    examples = largest_deformations(parts)
    figures.theta_figures(out, _numpy(parts), x_te.numpy(), warped.numpy(), examples)
    summaries = {m: summarise_runs(r) for m, r in results.items()}
    figures.accuracy_curves(out, {m: s["curves"] for m, s in summaries.items()}, "stn")
    for m, r in results.items():  # the first seed's models, image by image
        net = trained_model(r, 0, m == "stn", device)
        summaries[m]["test_correct_seed0"] = correct_on(net, x_te, y_te, device)
    metrics = {
        **summaries,
        "deformations": deformation_stats(parts),
        "examples": examples,
        "padding": "grid_sample samples the un-normalised image (background 0 = zero "
        "padding); normalisation happens after the transformer",
        "device": str(device),
        "wall_seconds": time.perf_counter() - t_start,
        "n_train": min(config.limit_train or sum(COUNTS["train"]), sum(COUNTS["train"])),
        "n_test": len(y_te),
    }
    return metrics
