"""Study: the STN on MNIST grown 3× with elastic and zoom-out copies — does it undo them?

Train 60k → 180k and test 10k → 30k (``data.expand``), the kind of every image kept, so accuracy
is reported per kind, with and without the transformer. Whether the STN "undoes" a deformation
is measured, not assumed: the θ scale it applies to zoomed-out inputs against originals (undoing
a Z× zoom-out needs a scale of about 1/Z), and the accuracy gain per kind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mnistlab import schemas
from mnistlab.config import SEED_MAX, option
from mnistlab.data import COUNTS, KINDS, DeformParams, expand, load_mnist
from mnistlab.executors import Cell
from mnistlab.progress import Progress
from mnistlab.stats import mean_ci
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.studies.stn import (
    STNConfig,
    correct_on,
    decompose_theta,
    deformation_stats,
    load_cells,
    model_cells,
    summarise_runs,
    thetas_and_outputs,
    trained_model,
)
from mnistlab.train.engine import Pool

STUDY = "stn-deform"


@dataclass(frozen=True)
class STNDeformConfig(STNConfig):
    """The STN study's settings (three seeds, every model's seeds in one stack) plus the
    deformations, and a larger train subset scored per epoch (15k of 180k)."""

    train_eval_size: int = option(
        15_000,
        "training images scored in eval mode after each epoch",
        unit="images",
        lo=1,
        hi=10**7,
    )
    sigma: float = option(
        2.0, "elastic displacement std at the 3×3 control points", unit="px", lo=0.0, hi=28.0
    )
    zoom_factor: float = option(
        4.0, "zoom-out factor of the shrunken copies", cli="--zoom", lo=1.0, hi=28.0
    )
    deform_seed: int = option(0, "seed of the elastic displacements", cli="", lo=0, hi=SEED_MAX)

    def __post_init__(self) -> None:
        super().__post_init__()
        DeformParams(sigma=self.sigma, zoom_factor=self.zoom_factor)  # validates both


def _expanded(split: str, limit: int | None, cfg: STNDeformConfig, seed: int, data_dir):
    images, labels = load_mnist(split, data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    params = DeformParams(sigma=cfg.sigma, zoom_factor=cfg.zoom_factor)
    return expand(images, labels, seed=seed, params=params)


def _data(config: STNDeformConfig, data_dir: Path | str | None) -> tuple[Pool, int]:
    """Training then test images (the expansions are cached) and the number of training ones."""
    train = _expanded("train", config.limit_train, config, config.deform_seed, data_dir)
    test = _expanded("test", config.limit_test, config, config.deform_seed + 1, data_dir)
    pool = Pool(
        torch.cat([train.images, test.images]),
        torch.cat([train.labels, test.labels]),
        torch.cat([train.kind, test.kind]),
        KINDS,
    )
    return pool, len(train)


def cells(
    config: STNDeformConfig,
    out: Path,
    data_dir: Path | str | None,
    device: torch.device,
    progress: Progress | None,
) -> list[Cell]:
    """The study's cells (module level: a worker process may build them to run one)."""
    return model_cells(config, out, partial(_data, config, data_dir), device, progress, STUDY)


def run(
    config: STNDeformConfig,
    out_dir: Path | str,
    env: Env | None = None,
) -> schemas.STNDeformMetrics:
    """Expand, train STN and baseline, analyse per kind; write everything to ``out_dir``."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config, run_: StudyRun) -> dict:
    """The study's work inside its opened run folder; returns its metrics."""
    out, device, progress, executor = run_.out, run_.device, run_.progress, run_.executor
    t_start = time.perf_counter()
    progress.message("stn-deform: building the expanded train and test sets (cached)")
    t0 = time.perf_counter()
    test = _expanded("test", config.limit_test, config, config.deform_seed + 1, run_.data_dir)
    # Built (and cached) before the cells, which read it: they may run in other processes.
    _expanded("train", config.limit_train, config, config.deform_seed, run_.data_dir)
    expand_seconds = time.perf_counter() - t0

    executor.run(cells(config, out, run_.data_dir, device, run_.cell_progress), root=out)
    results = load_cells(config, out)
    n_train = 3 * min(config.limit_train or sum(COUNTS["train"]), sum(COUNTS["train"]))
    metrics = _metrics(out, results, n_train, test, config, device)
    metrics["expand_seconds"] = expand_seconds
    metrics["wall_seconds"] = time.perf_counter() - t_start
    return metrics


def _metrics(out: Path, results, n_train: int, test, config: STNDeformConfig, device) -> dict:
    """Accuracy per model and kind (curves, finals, per seed, per image and seed for McNemar)
    and what the first seed's STN does to each kind."""
    from mnistlab.figures import stn as figures

    summaries = {m: summarise_runs(r, KINDS) for m, r in results.items()}
    figures.accuracy_curves(
        out, {m: s["curves"] for m, s in summaries.items()}, "stn-deform", ("all", *KINDS)
    )
    models = {m: trained_model(r, 0, m == "stn", device) for m, r in results.items()}
    return {
        "n_train": n_train,
        "n_test": len(test),
        "models": summaries,
        "final_test_acc": {m: _final(r, "test") for m, r in results.items()},
        "final_train_acc": {m: _final(r, "train_eval") for m, r in results.items()},
        "per_seed_final_test_acc": {
            m: {
                k: [r.rows(i)[-1][_key("test", k)] for i in range(len(r.states))]
                for k in ("all", *KINDS)
            }
            for m, r in results.items()
        },
        "test_correct_by_seed": {
            m: [
                correct_on(
                    trained_model(r, i, m == "stn", device), test.images, test.labels, device
                )
                for i in range(len(r.states))
            ]
            for m, r in results.items()
        },
        "kinds": list(KINDS),
        "test_kind_counts": [int((test.kind == k).sum()) for k in range(len(KINDS))],
        **_theta_by_kind(out, models["stn"], test, config, device),
        "zoom_factor": config.zoom_factor,
        "sigma": config.sigma,
        "device": str(device),
    }


def _theta_by_kind(out: Path, model, test, config: STNDeformConfig, device) -> dict[str, Any]:
    """What the first seed's STN does to each kind of test image: mean θ scale, deformation
    statistics, example warps and the scale histogram (the evidence of undoing)."""
    from mnistlab.figures import stn as figures

    thetas, warped = thetas_and_outputs(model, test.images, device)
    parts = decompose_theta(thetas)
    iso = torch.sqrt(parts["scale_x"].abs() * parts["scale_y"].abs())
    scale, by_kind, scale_lists = {}, {}, {}
    for k, name in enumerate(KINDS):
        mask = test.kind == k
        scale[name] = float(iso[mask].mean())
        scale_lists[name] = iso[mask].tolist()
        by_kind[name] = deformation_stats({p: v[mask] for p, v in parts.items()})
    shown = {
        name: torch.nonzero(test.kind == KINDS.index(name)).flatten()[:8].tolist()
        for name in ("zoom", "elastic", "original")
    }
    figures.kind_examples(out, test.images.numpy(), warped.numpy(), shown)
    figures.scale_by_kind(out, scale_lists, config.zoom_factor)
    return {"mean_scale_by_kind": scale, "deformations_by_kind": by_kind}


def _key(split: str, kind: str) -> str:
    return f"{split}_acc" if kind == "all" else f"{split}_acc_{kind}"


def _final(result, split: str) -> dict[str, tuple[float, float]]:
    """Per kind: mean ± 95 % CI over seeds of the last epoch's accuracy."""
    last = [result.rows(i)[-1] for i in range(len(result.states))]
    return {k: mean_ci([r[_key(split, k)] for r in last]) for k in ("all", *KINDS)}
