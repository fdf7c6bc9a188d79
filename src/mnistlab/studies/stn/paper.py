"""Study: the spatial-transformer paper's own benchmark — distorted MNIST, CNN vs ST-CNN.

Jaderberg et al. 2015, Table 1, report % test error on four distortions of MNIST (R, RTS, P, E;
``data/distort.py``) for a CNN and the same CNN behind an affine spatial transformer
(``models/paper_stn.py``). This study trains both on each distortion, every seed of a model as
one stack of the training engine (a seed gives both models the same initial draw stream and
batch order, so seeds pair them), and scores each on the distortion's fixed test set.

A fair comparison gives both models the same search, not the same settings: per distortion,
each model's learning rate — and the ST-CNN's localisation-network step scale — are chosen on
a validation split of the *distorted training images* (the last ``val_size`` of them; the
search trains on the first ``search_train``), the last epoch's validation error deciding as
the last epoch's test error is what is reported. The test set is never read before the
chosen models are scored once per epoch. RTS's 42×42 canvas is seen at half resolution, as the
public reproductions do (``models/paper_stn.py``).

Budgets: ``paper`` is the appendix's schedule (SGD, batch 256, lr ÷ 10 every 50k of 150k
iterations — 640 epochs of 60k images, a GPU's job; momentum 0.9 as in the Caffe solver of
daerduoCarey/SpatialTransformerLayer, ``examples/mnist_tests/*/solver.prototxt``); ``cpu`` is
what fits this project's 2-core CPU (README, design decisions: how it maps onto the paper's).
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
from mnistlab.studies.stn.theta import decompose_theta, thetas_and_outputs, undoing
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


# paper: 150k iterations × 256 images = 640 epochs of 60k, lr ÷ 10 after 50k and 100k (A.1);
# momentum 0.9 as in the reproductions' Caffe solver. ``lr`` is the default of the search grid.
BUDGETS = {
    "cpu": Budget(epochs=4, batch_size=64, lr=0.01, momentum=0.9, lr_schedule="cosine"),
    "paper": Budget(
        epochs=640, batch_size=256, lr=0.01, momentum=0.9, lr_schedule="steps", lr_drops=(213, 427)
    ),
}
LOC = ("localization.", "fc_loc.")  # the localisation network's parameter names
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
    lr_grid: tuple[float, ...] = option(
        (0.005, 0.01, 0.02), "learning rates searched (both models)", lo=0, hi=10, open_lo=True
    )
    loc_scales: tuple[float, ...] = option(
        (1.0, 0.1, 0.01), "ST-CNN localisation step scales searched", lo=0, hi=10, open_lo=True
    )
    search_train: int = option(
        30_000, "distorted training images the search trains on", lo=1, hi=10**7
    )
    val_size: int = option(
        10_000, "the last N distorted training images: the search's validation set", lo=1, hi=10**7
    )
    rts_half: bool = option(True, "RTS at half resolution, as the reproductions", cli="")

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


def half(cfg: STNPaperConfig, kind: str) -> bool:
    return cfg.rts_half and SIZES[kind] > 28


def members(
    cfg: STNPaperConfig,
    kind: str,
    model: str,
    recipes: list[tuple[int, float, float]],
    train: torch.Tensor,
    evals: dict[str, torch.Tensor] | None = None,
) -> list[Member]:
    """One member per (seed, lr, localisation scale): the paper's net for ``kind`` drawn
    from the seed, trained on the pool items ``train``."""
    use_stn, size = model == "st-cnn", SIZES[kind]
    return [
        Member(
            seed=s,
            state=init_paper_net(use_stn, size, s, half(cfg, kind)).state_dict(),
            train=train,
            lr=lr,
            evals=evals or {},
            meta={"distortion": kind, "model": model, "seed": s, "lr": lr, "loc_scale": scale},
            lr_scales=tuple((prefix, scale) for prefix in LOC) if scale != 1.0 else (),
        )
        for s, lr, scale in recipes
    ]


def train_model(
    cfg: STNPaperConfig,
    kind: str,
    model: str,
    group: list[Member],
    pool: Pool,
    shared: dict[str, torch.Tensor],
    *,
    device: torch.device,
    checkpoint: Path | None,
    progress: Progress,
    what: str = "",
) -> StackResult:
    """``group`` (one model on one distortion) as one stack, scored after each epoch on the
    ``shared`` evaluation sets (indices into ``pool``)."""
    use_stn = model == "st-cnn"
    return train_stack(
        StackedPaperNet(use_stn, device, half=half(cfg, kind)),
        group,
        pool,
        cfg.plan.schedule(cfg.epochs_run),
        trainable={n for n, _ in PaperNet(use_stn, SIZES[kind]).named_parameters()},
        device=device,
        prepare=to_input,
        shared_evals=shared,
        checkpoint=checkpoint,
        progress=progress,
        description=f"stn-paper {kind}: {model} × {len(group)}{what}",
    )


def grid(cfg: STNPaperConfig, model: str) -> list[tuple[float, float]]:
    """The search's (lr, localisation scale) pairs: the same lrs for both models, and for the
    ST-CNN each with every scale."""
    scales = cfg.loc_scales if model == "st-cnn" else (1.0,)
    return [(lr, scale) for lr in cfg.lr_grid for scale in scales]


def search(cfg, kind: str, model: str, train: Distorted, out: Path, device, progress) -> dict:
    """Every grid point trained on the first ``search_train`` distorted training images and
    scored on the last ``val_size`` (one seed, the budget's schedule); the choice: the lowest
    last-epoch validation error (ties: the earlier grid point). Test images are not read."""
    n = len(train)
    val_size = min(cfg.val_size, n // 2)
    fit = torch.arange(min(cfg.search_train, n - val_size))
    val = torch.arange(n - val_size, n)
    points = grid(cfg, model)
    group = members(cfg, kind, model, [(cfg.seed, lr, sc) for lr, sc in points], fit)
    res = train_model(
        cfg, kind, model, group, Pool(train.images, train.labels), {"val": val},
        device=device, checkpoint=out / "checkpoints" / f"search_{kind}_{model}.pt",
        progress=progress, what=" (search)",
    )  # fmt: skip
    table = [
        {"lr": lr, "loc_scale": sc, "val_error": 1 - res.rows(i)[-1]["val_acc"]}
        for i, (lr, sc) in enumerate(points)
    ]
    best = min(range(len(table)), key=lambda i: (table[i]["val_error"], i))
    return {"grid": table, "chosen": table[best], "n_fit": len(fit), "n_val": len(val)}


def _final(cfg, kind, model, chosen, train, test, out, device, progress) -> dict:
    """Every seed with the chosen recipe on all training images, scored on the test set after
    each epoch; weights and per-image correctness (McNemar) kept."""
    pool = Pool(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]))
    recipe = [(cfg.seed + i, chosen["lr"], chosen["loc_scale"]) for i in range(cfg.seeds)]
    res = train_model(
        cfg, kind, model, members(cfg, kind, model, recipe, torch.arange(len(train))), pool,
        {"test": torch.arange(len(train), len(pool.y))}, device=device,
        checkpoint=out / "checkpoints" / f"{kind}_{model}.pt", progress=progress,
    )  # fmt: skip
    correct = []
    for i, state in enumerate(res.states):
        save_checkpoint(_weights(out, kind, model, cfg.seed + i), {"model": state})
        net = solo(PaperNet(model == "st-cnn", SIZES[kind], half(cfg, kind)), state).to(device)
        correct.append(correct_on(net, test.images, test.labels, device))
    runs.atomic_write_csv(out / f"history_{kind}_{model}.csv", res.history)
    rows = [res.rows(i) for i in range(len(res.states))]
    return {
        "test_acc_by_epoch": [[r["test_acc"] for r in h] for h in rows],
        "train_acc_by_epoch": [[r["train_acc"] for r in h] for h in rows],
        "test_correct_by_seed": correct,
        "seconds": res.seconds,
    }


def cells(
    config: STNPaperConfig,
    out: Path,
    data_dir: Path | str | None,
    device: torch.device,
    progress: Progress | None,
) -> list[Cell]:
    """One cell per (distortion, model): its search, then its seeds with the chosen recipe.
    Module level, so a worker process can build them and run one (``run all --jobs``)."""
    todo = [(k, m) for k in config.distortions for m in MODELS]
    return [_cell(config, out, k, m, data_dir, device, progress) for k, m in todo]


def _cell(cfg, out: Path, kind: str, model: str, data_dir, device, progress) -> Cell:
    path = out / "cells" / f"{kind}_{model}.json"
    chosen_path = out / "search" / f"{kind}_{model}.json"

    def run_cell() -> None:
        bar = progress or default_progress()
        train = distorted(kind, "train", cfg.limit_train, cfg.data_seed, data_dir)
        if not chosen_path.is_file():
            runs.write_json(chosen_path, search(cfg, kind, model, train, out, device, bar))
        chosen = runs.read_finished(chosen_path)["chosen"]
        test = distorted(kind, "test", cfg.limit_test, cfg.data_seed, data_dir)
        result = _final(cfg, kind, model, chosen, train, test, out, device, bar)
        runs.write_json(path, {**result, "chosen": chosen, "where": host_info()})

    cost = {"cnn": 1.0, "st-cnn": 3.0}[model] * (0.5 if half(cfg, kind) else 1.0)
    return Cell(
        f"{kind}-{model}", run_cell, done=path.is_file, gpus=float(device.type == "cuda"),
        weight=cost,
    )  # fmt: skip


def _weights(out: Path, kind: str, model: str, seed: int) -> Path:
    return out / "models" / f"{kind}_{model}_seed{seed}.pt"


def run(config: STNPaperConfig, out_dir: Path | str, env: Env | None = None) -> dict[str, Any]:
    """Train CNN and ST-CNN on every distortion over seeds; write results and figures."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config: STNPaperConfig, run_: StudyRun) -> dict[str, Any]:
    from mnistlab.figures import stn_paper as figures

    t0 = time.perf_counter()
    out = run_.out
    run_.executor.run(cells(config, out, run_.data_dir, run_.device, run_.cell_progress), root=out)
    results, thetas, digests, n_test, shown = {}, {}, {}, {}, {}
    for kind in config.distortions:
        test = distorted(kind, "test", config.limit_test, config.data_seed, run_.data_dir)
        digests[kind], n_test[kind] = test.digest(), len(test)
        cells_ = {m: runs.read_finished(out / "cells" / f"{kind}_{m}.json") for m in MODELS}
        results[kind] = {m: _summary(c) for m, c in cells_.items()}
        thetas[kind], shown[kind] = _theta_summary(run_, config, kind, test)
    figures.examples(out, {k: v[:2] for k, v in shown.items()})
    figures.learned_vs_drawn(out, {k: v[2] for k, v in shown.items()})
    figures.error_curves(out, results)
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
        "rts_half": config.rts_half,
        "search": {"lr_grid": list(config.lr_grid), "loc_scales": list(config.loc_scales)},
        "device": str(run_.device),
        "wall_seconds": time.perf_counter() - t0,
    }


def _theta_summary(run_: StudyRun, config: STNPaperConfig, kind: str, test: Distorted):
    """The first seed's θ against what was drawn, and every seed's θ spread and active
    localisation units (a localisation network whose ReLUs all died outputs one fixed θ)."""
    nets = [_st_cnn(run_, config, kind, config.seed + i) for i in range(config.seeds)]
    seeds = [thetas_and_outputs(net, test.images, run_.device) for net in nets]
    theta, warped = seeds[0]
    stats, learned = undoing(decompose_theta(theta), test.params)
    stats["theta_sd_by_seed"] = [float(t.reshape(-1, 6).std(0).max()) for t, _ in seeds]
    probe = test.images[:2000]
    stats["active_units_by_seed"] = [_active_units(net, probe, run_.device) for net in nets]
    stats["hidden_units"] = nets[0].fc_loc[0].out_features
    return stats, (test.images[:8].numpy(), warped[:8].numpy(), learned)


def _st_cnn(run_: StudyRun, config: STNPaperConfig, kind: str, seed: int) -> PaperNet:
    state = load_checkpoint(_weights(run_.out, kind, "st-cnn", seed))["model"]
    return solo(PaperNet(True, SIZES[kind], half(config, kind)), state).to(run_.device)


@torch.no_grad()
def _active_units(net: PaperNet, images: torch.Tensor, device: torch.device) -> int:
    """Hidden ReLUs of the localisation network that fire on at least one of ``images``."""
    x = to_input(images, device)
    if net.half:
        x = torch.nn.functional.max_pool2d(x, 2)
    h = net.localization(net.normalise(x)).flatten(1)
    return int((torch.relu(net.fc_loc[0](h)) > 0).any(0).sum())


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


def _summary(cell: dict[str, Any]) -> dict[str, Any]:
    final = [h[-1] for h in cell["test_acc_by_epoch"]]
    return {
        "chosen": cell["chosen"],
        "test_error": mean_ci([1 - a for a in final]),
        "per_seed_test_error": [1 - a for a in final],
        "test_correct_by_seed": cell["test_correct_by_seed"],
        "test_acc_curve": np.mean(cell["test_acc_by_epoch"], axis=0).tolist(),
        "train_acc_curve": np.mean(cell["train_acc_by_epoch"], axis=0).tolist(),
        "seconds": cell["seconds"],
    }
