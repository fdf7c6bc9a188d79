"""Study: the spatial-transformer paper's own benchmark — distorted MNIST, CNN vs ST-CNN.

Jaderberg et al. 2015, Table 1, report % test error on four distortions of MNIST (R, RTS, P, E;
``data/distort.py``) for a CNN and the same CNN behind an affine spatial transformer
(``models/paper_stn.py``). This study trains both on each distortion, every seed of a model as
one stack of the training engine (a seed gives both models the same initial draw stream and
batch order, so seeds pair them), and scores each on the distortion's fixed test set.
Nothing is chosen on test data: the schedule is fixed in advance (``BUDGETS``) and the last
epoch's weights are the ones scored.

Budgets: ``paper`` is the appendix's schedule (SGD, batch 256, lr 0.01 divided by 10 every 50k
of 150k iterations — 640 epochs of 60k images, a GPU's job); ``cpu`` is what fits this
project's 2-core CPU (see ``BUDGETS`` and the README for how its learning rate was chosen on a
validation split of the training images, ``benchmarks/stn_paper_pilot.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistlab import runs
from mnistlab.config import SEED_MAX, ImageLimits, option
from mnistlab.data import COUNTS, load_mnist
from mnistlab.data.distort import DISTORTIONS, SIZES, Distorted, distort
from mnistlab.errors import MnistlabError
from mnistlab.executors import Cell, host_info
from mnistlab.models.paper_stn import PaperNet, StackedPaperNet, init_paper_net
from mnistlab.models.stn import to_input
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.stats import mean_ci
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.studies.stn.common import correct_on
from mnistlab.studies.stn.theta import decompose_theta, thetas_and_outputs
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.engine import Member, Pool, Schedule, StackResult, train_stack
from mnistlab.train.evaluate import solo

STUDY = "stn-paper"
MODELS = ("cnn", "st-cnn")


@dataclass(frozen=True)
class Budget:
    """How every model of the study trains (one SGD schedule for CNN and ST-CNN alike)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    lr_schedule: str  # "cosine" or "steps"
    lr_drops: tuple[int, ...] = ()

    def schedule(self, epochs: int | None = None) -> Schedule:
        return Schedule(
            epochs=epochs or self.epochs,
            batch_size=self.batch_size,
            optimizer="sgd",
            momentum=self.momentum,
            lr_schedule=self.lr_schedule,
            lr_drops=self.lr_drops,
        )


# paper: 150k iterations × 256 images = 640 epochs of 60k, lr ÷ 10 after 50k and 100k (A.1)
BUDGETS = {
    "cpu": Budget(epochs=4, batch_size=64, lr=0.01, momentum=0.9, lr_schedule="cosine"),
    "paper": Budget(
        epochs=640, batch_size=256, lr=0.01, momentum=0.0, lr_schedule="steps", lr_drops=(213, 427)
    ),
}
PAPER_IMAGES = 150_000 * 256  # training images the paper's schedule shows each model


@dataclass(frozen=True)
class STNPaperConfig(ImageLimits):
    """The four distortions, both models, three seeds, the CPU budget."""

    distortions: tuple[str, ...] = option(
        DISTORTIONS, "distortions to train on", choices=DISTORTIONS
    )
    budget: str = option("cpu", "training schedule (see the README)", choices=tuple(BUDGETS))
    epochs: int | None = option(
        None, "epochs instead of the budget's", unit="epochs", lo=1, hi=10_000
    )
    seeds: int = option(3, "repeats with different seeds (init, batch order)", lo=1, hi=1000)
    seed: int = option(0, "first seed; repeats use seed, seed+1, …", lo=0, hi=SEED_MAX)
    data_seed: int = option(
        0, "seed of the distortions (train and test)", cli="", lo=0, hi=SEED_MAX
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.distortions)) != len(self.distortions):
            raise MnistlabError("--distortions: name each distortion once")

    @property
    def plan(self) -> Budget:
        return BUDGETS[self.budget]

    @property
    def epochs_run(self) -> int:
        return self.epochs or self.plan.epochs


def distorted(kind: str, split: str, limit: int | None, data_seed: int, data_dir) -> Distorted:
    """The ``split`` images (the first ``limit``) distorted by ``kind`` — fixed by the seed."""
    images, labels = load_mnist(split, data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return distort(images, labels, kind, data_seed, split)


def members(kind: str, model: str, seeds: range, lr: float, n_train: int) -> list[Member]:
    """One member per seed: the paper's net for ``kind``'s image size, drawn from the seed,
    trained on the pool's first ``n_train`` images."""
    use_stn, size = model == "st-cnn", SIZES[kind]
    return [
        Member(
            seed=s,
            state=init_paper_net(use_stn, size, s).state_dict(),
            train=torch.arange(n_train),
            lr=lr,
            meta={"distortion": kind, "model": model, "seed": s, "lr": lr},
        )
        for s in seeds
    ]


def train_model(
    kind: str,
    model: str,
    group: list[Member],
    schedule: Schedule,
    pool: Pool,
    n_train: int,
    *,
    device: torch.device,
    checkpoint: Path | None,
    progress: Progress,
    loc_lr_scale: float = 1.0,
) -> StackResult:
    """``group`` (one model on one distortion) as one stack. ``pool`` holds the training
    images first (``n_train``), then the images scored after each epoch (``test``)."""
    use_stn = model == "st-cnn"
    return train_stack(
        StackedPaperNet(use_stn, device, loc_lr_scale),
        group,
        pool,
        schedule,
        trainable={n for n, _ in PaperNet(use_stn, SIZES[kind]).named_parameters()},
        device=device,
        prepare=to_input,
        shared_evals={"test": torch.arange(n_train, len(pool.y))},
        checkpoint=checkpoint,
        progress=progress,
        description=f"stn-paper {kind}: {model} × {len(group)}",
    )


def _cell(cfg: STNPaperConfig, out: Path, kind: str, model: str, env: StudyRun) -> Cell:
    """Train one (distortion, model) pair and store its weights, histories and which test
    images each seed gets right (for the report's tests)."""
    path = out / "cells" / f"{kind}_{model}.json"

    def run_cell() -> None:
        train = distorted(kind, "train", cfg.limit_train, cfg.data_seed, env.data_dir)
        test = distorted(kind, "test", cfg.limit_test, cfg.data_seed, env.data_dir)
        pool = Pool(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]))
        seeds = range(cfg.seed, cfg.seed + cfg.seeds)
        res = train_model(
            kind,
            model,
            members(kind, model, seeds, cfg.plan.lr, len(train)),
            cfg.plan.schedule(cfg.epochs_run),
            pool,
            len(train),
            device=env.device,
            checkpoint=out / "checkpoints" / f"{kind}_{model}.pt",
            progress=env.cell_progress or default_progress(),
        )
        correct = []
        for i, state in enumerate(res.states):
            save_checkpoint(_weights(out, kind, model, cfg.seed + i), {"model": state})
            net = solo(PaperNet(model == "st-cnn", SIZES[kind]), state).to(env.device)
            correct.append(correct_on(net, test.images, test.labels, env.device))
        runs.atomic_write_csv(out / f"history_{kind}_{model}.csv", res.history)
        rows = [res.rows(i) for i in range(len(res.states))]
        runs.write_json(
            path,
            {
                "test_acc_by_epoch": [[r["test_acc"] for r in h] for h in rows],
                "train_acc_by_epoch": [[r["train_acc"] for r in h] for h in rows],
                "test_correct_by_seed": correct,
                "seconds": res.seconds,
                "where": host_info(),
            },
        )

    return Cell(
        f"{kind}-{model}", run_cell, done=path.is_file, gpus=float(env.device.type == "cuda")
    )


def _weights(out: Path, kind: str, model: str, seed: int) -> Path:
    return out / "models" / f"{kind}_{model}_seed{seed}.pt"


def run(config: STNPaperConfig, out_dir: Path | str, env: Env | None = None) -> dict[str, Any]:
    """Train CNN and ST-CNN on every distortion over seeds; write results and figures."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config: STNPaperConfig, run_: StudyRun) -> dict[str, Any]:
    from mnistlab.figures import stn_paper as figures

    t0 = time.perf_counter()
    cells = [_cell(config, run_.out, k, m, run_) for k in config.distortions for m in MODELS]
    run_.executor.run(cells, root=run_.out)
    results, thetas, digests, n_test, shown = {}, {}, {}, {}, {}
    for kind in config.distortions:
        test = distorted(kind, "test", config.limit_test, config.data_seed, run_.data_dir)
        digests[kind], n_test[kind] = test.digest(), len(test)
        cells_ = {m: runs.read_finished(run_.out / "cells" / f"{kind}_{m}.json") for m in MODELS}
        results[kind] = {m: _summary(c) for m, c in cells_.items()}
        seeds = [_theta_of(run_, kind, config.seed + i, test) for i in range(config.seeds)]
        theta, warped = seeds[0]
        thetas[kind], learned = undoing(decompose_theta(theta), test.params)
        thetas[kind]["theta_sd_by_seed"] = [float(t.reshape(-1, 6).std(0).max()) for t, _ in seeds]
        shown[kind] = (test.images[:8].numpy(), warped[:8].numpy(), learned)
    figures.examples(run_.out, {k: v[:2] for k, v in shown.items()})
    figures.learned_vs_drawn(run_.out, {k: v[2] for k, v in shown.items()})
    figures.error_curves(run_.out, results)
    n_train = min(config.limit_train or sum(COUNTS["train"]), sum(COUNTS["train"]))
    return {
        "distortions": list(config.distortions),
        "models": list(MODELS),
        "results": results,
        "theta": thetas,
        "test_digest": digests,
        "n_train": n_train,
        "n_test": n_test,
        "budget": _budget(config, n_train),
        "device": str(run_.device),
        "wall_seconds": time.perf_counter() - t0,
    }


def _theta_of(run_: StudyRun, kind: str, seed: int, test: Distorted):
    """(θ of every test image, the warped images) of one seed's ST-CNN."""
    state = load_checkpoint(_weights(run_.out, kind, "st-cnn", seed))["model"]
    net = solo(PaperNet(True, SIZES[kind]), state).to(run_.device)
    return thetas_and_outputs(net, test.images, run_.device)


def _budget(config: STNPaperConfig, n_train: int) -> dict[str, Any]:
    plan = config.plan
    return {
        "name": config.budget,
        "epochs": config.epochs_run,
        "batch_size": plan.batch_size,
        "lr": plan.lr,
        "momentum": plan.momentum,
        "lr_schedule": plan.lr_schedule,
        "lr_drops": list(plan.lr_drops),
        "images_per_model": config.epochs_run * n_train,
        "paper_images_per_model": PAPER_IMAGES,
    }


def _wrap(deg: torch.Tensor) -> torch.Tensor:
    return torch.remainder(deg + 180.0, 360.0) - 180.0


def _residual(drawn: torch.Tensor, residual: torch.Tensor, learned: torch.Tensor) -> dict:
    """How much of a drawn distortion the transformer takes back: the spread of what is left
    after it (``residual``) against the spread drawn (1 − ratio: the share undone; 0 when the
    transformer ignores it, 1 when it takes every image back to one pose)."""
    d, r = drawn.double(), residual.double()
    corr = float(torch.corrcoef(torch.stack([learned.double(), d]))[0, 1])
    return {
        "drawn_sd": float(d.std()),
        "residual_sd": float(r.std()),
        "undone": 1.0 - float(r.std() / d.std()),
        "corr_learned_drawn": corr if np.isfinite(corr) else 0.0,
    }


def undoing(parts: dict[str, torch.Tensor], drawn: dict[str, torch.Tensor]):
    """θ statistics against what was drawn per test image: rotation (R, RTS) and scale (RTS,
    P, E). θ maps output to input, so undoing a drawn rotation of +a needs a learned rotation
    of −a (residual a + learned) and undoing a drawn scale s needs a θ scale ∝ s (residual
    log θ-scale − log s). Returns (statistics, per-image learned/drawn for the figure)."""
    iso = torch.sqrt(parts["scale_x"].abs() * parts["scale_y"].abs())
    stats: dict[str, Any] = {"mean_scale": float(iso.mean())}
    points: dict[str, Any] = {}
    if "angle_deg" in drawn:
        a, learned = drawn["angle_deg"], parts["rotation_deg"]
        stats["rotation"] = _residual(a, _wrap(a + learned), learned)
        points["rotation"] = (a.numpy(), learned.numpy())
    if "scale" in drawn:
        s = drawn["scale"]
        stats["scale"] = _residual(s.log(), iso.log() - s.log(), iso.log())
        points["scale"] = (s.numpy(), iso.numpy())
    return stats, points


def _summary(cell: dict[str, Any]) -> dict[str, Any]:
    final = [h[-1] for h in cell["test_acc_by_epoch"]]
    return {
        "test_error": mean_ci([1 - a for a in final]),
        "per_seed_test_error": [1 - a for a in final],
        "test_correct_by_seed": cell["test_correct_by_seed"],
        "test_acc_curve": np.mean(cell["test_acc_by_epoch"], axis=0).tolist(),
        "train_acc_curve": np.mean(cell["train_acc_by_epoch"], axis=0).tolist(),
        "seconds": cell["seconds"],
    }
