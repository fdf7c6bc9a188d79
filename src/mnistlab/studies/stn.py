"""Study: the tutorial spatial transformer on MNIST — accuracy vs plain CNN, what it learned.

For each seed the STN and the identical classifier without it are trained with the tutorial's
settings; test (and train) accuracy is recorded every epoch. The first seed's STN is then
inspected: every test image's θ is decomposed into rotation, scales, shear and translation, and
the report's list of learned deformations is derived from those distributions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from mnistlab import runs
from mnistlab.data import KINDS, load_mnist
from mnistlab.errors import MnistlabError
from mnistlab.models.stn import STNNet, to_input
from mnistlab.progress import Progress
from mnistlab.stats import mean_ci
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.loop import batch_indices, pick_device

STUDY = "stn"
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class STNConfig:
    """Tutorial defaults: SGD lr 0.01, batch 64, 20 epochs."""

    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    seeds: int = 3
    seed: int = 0
    train_eval_size: int = 10_000  # fixed train subset scored in eval mode each epoch
    limit_train: int | None = None  # tests / quick profile: first N training images
    limit_test: int | None = None
    device: str = "auto"


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


@torch.inference_mode()
def thetas_and_outputs(
    model: STNNet, images: torch.Tensor, device: torch.device, batch: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ for every image, and the STN's warped images as uint8 (for figures)."""
    model.eval()
    thetas, outs = [], []
    for i in range(0, len(images), batch):
        warped, theta = model.transform(to_input(images[i : i + batch], device))
        thetas.append(theta.cpu())
        outs.append((warped.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(thetas), torch.cat(outs)


# ------------------------------------------------------------------------------ training


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise MnistlabError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


@torch.inference_mode()
def accuracy_by_kind(
    model: STNNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    kind: torch.Tensor | None,
    device: torch.device,
    batch: int = 2048,
) -> dict[str, float]:
    """Accuracy overall and, when ``kind`` is given, per kind (original / elastic / zoom)."""
    model.eval()
    preds = torch.cat(
        [
            model(to_input(images[i : i + batch], device)).argmax(1).cpu()
            for i in range(0, len(images), batch)
        ]
    )
    correct = preds == labels
    out = {"all": correct.float().mean().item()}
    if kind is not None:
        for k, name in enumerate(KINDS):
            mask = kind == k
            if mask.any():
                out[name] = correct[mask].float().mean().item()
    return out


def train_model(
    *,
    use_stn: bool,
    train: tuple,
    test: tuple,
    cfg: Any,
    seed: int,
    ckpt: Path,
    progress: Progress,
    description: str,
) -> tuple[STNNet, list[dict[str, Any]]]:
    """Train for ``cfg.epochs``, checkpointing every epoch; resume from ``ckpt`` if present.

    ``train``/``test`` are ``(uint8 images, labels, kind or None)``. Each epoch records the
    running train loss, eval-mode accuracy on a fixed train subset and on the test set
    (overall and per kind).
    """
    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    model = STNNet(use_stn).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    x, y, kind = train
    sub = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    sub = sub[: cfg.train_eval_size]
    history: list[dict[str, Any]] = []
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        progress.message(f"{description}: resumed after epoch {len(history)}")
    task = progress.task(description, cfg.epochs)
    task.advance(len(history))
    y_dev = y.to(device)
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total = torch.zeros((), device=device)
        for idx in batch_indices(len(y), cfg.batch_size, generator):
            target = y_dev[idx.to(device)]
            loss = F.cross_entropy(model(to_input(x[idx], device)), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": total.item() / len(y), "epoch_seconds": train_seconds}
        tr = accuracy_by_kind(model, x[sub], y[sub], None if kind is None else kind[sub], device)
        te = accuracy_by_kind(model, *test, device)
        row.update({f"train_acc_{k}": v for k, v in tr.items()})
        row.update({f"test_acc_{k}": v for k, v in te.items()})
        history.append(row)
        save_checkpoint(
            ckpt,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
            },
        )
        task.advance(1, test_acc=te["all"])
    task.done()
    return model.eval(), history


def load_trained(ckpt: Path, use_stn: bool, device: torch.device) -> STNNet:
    model = STNNet(use_stn).to(device)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    return model.eval()


def begin_run(config: Any, out: Path, force: bool) -> tuple[torch.device, dict | None]:
    """Shared opening of both STN studies: check the optimizer name, choose the device once,
    and open the run folder (None = train; a dict = the finished run's metrics)."""
    if config.optimizer not in OPTIMIZERS:
        raise MnistlabError(f"unknown optimizer {config.optimizer!r}; choose {OPTIMIZERS}")
    device = pick_device(config.device)
    return device, runs.begin(out, config, force=force, device=str(device))


def summarise_runs(histories: list[list[dict]]) -> dict[str, Any]:
    """Final and best test accuracy (mean ± 95% CI over seeds)."""
    final = [h[-1]["test_acc_all"] for h in histories]
    best = [max(r["test_acc_all"] for r in h) for h in histories]
    best_epoch = [max(h, key=lambda r: r["test_acc_all"])["epoch"] for h in histories]
    return {
        "final_test_acc": mean_ci(final),
        "best_test_acc": mean_ci(best),
        "best_epoch": mean_ci(best_epoch),
        "per_seed_final": final,
        "per_seed_best": best,
        "epoch_seconds": float(np.mean([r["epoch_seconds"] for h in histories for r in h])),
    }


def _subset(images, labels, limit):
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def run(
    config: STNConfig, out_dir: Path | str, *, progress: Progress | None = None, force: bool = False
) -> dict:
    """Train STN and baseline over seeds, analyse θ; write results/figures to ``out_dir``."""
    from mnistlab.studies import stn_figures

    progress = progress or Progress()
    out = Path(out_dir)
    device, done = begin_run(config, out, force)
    if done is not None:
        return done
    x_tr, y_tr = _subset(*load_mnist("train"), config.limit_train)
    x_te, y_te = _subset(*load_mnist("test"), config.limit_test)
    histories: dict[str, list] = {"stn": [], "baseline": []}
    t_start = time.perf_counter()
    for s in range(config.seeds):
        seed = config.seed + s
        for name in ("stn", "baseline"):
            _, hist = train_model(
                use_stn=name == "stn",
                train=(x_tr, y_tr, None),
                test=(x_te, y_te, None),
                cfg=config,
                seed=seed,
                ckpt=out / "checkpoints" / f"{name}_seed{seed}.pt",
                progress=progress,
                description=f"stn: {name} seed {seed}",
            )
            runs.atomic_write_csv(out / f"history_{name}_seed{seed}.csv", hist)
            histories[name].append(hist)
    model = load_trained(out / "checkpoints" / f"stn_seed{config.seed}.pt", True, device)
    thetas, warped = thetas_and_outputs(model, x_te, device)
    parts = decompose_theta(thetas)
    stats = deformation_stats(parts)
    examples = stn_figures.theta_figures(out, parts, x_te, warped)
    stn_figures.accuracy_curves(out, histories, "stn")
    metrics = {
        "stn": summarise_runs(histories["stn"]),
        "baseline": summarise_runs(histories["baseline"]),
        "deformations": stats,
        "examples": examples,
        "padding": "grid_sample samples the un-normalised image (background 0 = zero padding); "
        "normalisation happens after the transformer",
        "device": str(device),
        "wall_seconds": time.perf_counter() - t_start,
        "n_train": len(y_tr),
        "n_test": len(y_te),
    }
    runs.atomic_write_json(
        out / "theta_parts.json", {k: [round(float(v), 5) for v in t] for k, t in parts.items()}
    )
    runs.finish_run(out, metrics)
    return metrics
