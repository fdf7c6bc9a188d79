"""Study ``stn-deform``: the STN on MNIST grown 3× with elastic and zoom-out copies — does it
learn to undo them, and does it help?

Train 60k → 180k and test 10k → 30k (``data.expand``), the kind of every image kept, so
accuracy is reported per kind, with and without the transformer. Whether the STN "undoes" a
deformation is measured, not assumed: the θ scale every seed applies to zoomed-out test images
against originals over the scored epochs (undoing a Z× zoom-out needs a relative
magnification of Z), and the θ ablations (:mod:`.theta`) say whether a gain needs each image's
own warp or survives one global warp per kind.
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
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.studies.stn.common import (
    STNConfig,
    StudyData,
    ablations,
    correct_on,
    load_cells,
    model_cells,
    summarise_model,
    theta_series,
    trained_model,
)
from mnistlab.studies.stn.theta import (
    decompose_theta,
    deformation_stats,
    iso_scale,
    magnification,
    thetas_and_outputs,
)
from mnistlab.train.engine import Pool

STUDY = "stn-deform"
SHOWN = 6  # test images per kind and seed in the per-seed grid


@dataclass(frozen=True)
class STNDeformConfig(STNConfig):
    """The STN study's settings (every model's seeds in one stack) plus the deformations,
    and a larger train subset scored per epoch (15k of 180k)."""

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


def expanded(split: str, limit: int | None, cfg: STNDeformConfig, seed: int, data_dir):
    """The ``split`` images (the first ``limit``) with their elastic and zoom-out copies."""
    images, labels = load_mnist(split, data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    params = DeformParams(sigma=cfg.sigma, zoom_factor=cfg.zoom_factor)
    return expand(images, labels, seed=seed, params=params)


def study_data(config: STNDeformConfig, data_dir: Path | str | None) -> StudyData:
    """Training then test images (the expansions are cached) and the number of training ones."""
    train = expanded("train", config.limit_train, config, config.deform_seed, data_dir)
    test = expanded("test", config.limit_test, config, config.deform_seed + 1, data_dir)
    pool = Pool(
        torch.cat([train.images, test.images]),
        torch.cat([train.labels, test.labels]),
        torch.cat([train.kind, test.kind]),
        KINDS,
    )
    return StudyData(pool, len(train), test.kind, KINDS)


def cells(
    config: STNDeformConfig,
    out: Path,
    data_dir: Path | str | None,
    device: torch.device,
    progress: Progress | None,
) -> list[Cell]:
    """The study's cells (module level: a worker process may build them to run one)."""
    return model_cells(config, out, partial(study_data, config, data_dir), device, progress, STUDY)


def run(
    config: STNDeformConfig, out_dir: Path | str, env: Env | None = None
) -> schemas.STNDeformMetrics:
    """Expand, train STN and baseline, analyse per kind; write everything to ``out_dir``."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config: STNDeformConfig, run_: StudyRun) -> dict:
    """The study's work inside its opened run folder; returns its metrics."""
    from mnistlab.figures import stn as figures

    out, device = run_.out, run_.device
    t_start = time.perf_counter()
    run_.progress.message(f"{STUDY}: building the expanded train and test sets (cached)")
    t0 = time.perf_counter()
    data = study_data(config, run_.data_dir)  # built (and cached) before the cells, which read it
    expand_seconds = time.perf_counter() - t0
    run_.executor.run(cells(config, out, run_.data_dir, device, run_.cell_progress), root=out)
    results = load_cells(config, out)
    models = {m: summarise_model(r, KINDS, config.scored) for m, r in results.items()}
    figures.seed_curves(
        out, {m: s["curves_by_seed"] for m, s in models.items()}, STUDY, ("all", *KINDS)
    )
    x_te, y_te = data.pool.x[data.n_train :], data.pool.y[data.n_train :]
    for m, r in results.items():  # every seed's final model, image by image (McNemar)
        models[m]["test_correct_by_seed"] = [
            correct_on(trained_model(r, k, m == "stn", device), x_te, y_te, device)
            for k in range(config.seeds)
        ]
    theta = theta_series(results["stn"])
    return {
        "kinds": ["all", *KINDS],
        "score_epochs": config.scored,
        "n_train": 3 * min(config.limit_train or sum(COUNTS["train"]), sum(COUNTS["train"])),
        "n_test": len(y_te),
        "test_kind_counts": [int((data.test_kinds == k).sum()) for k in range(len(KINDS))],
        "models": models,
        "theta_by_seed": theta,
        "magnification": _magnification(results["stn"], config),
        **final_theta(out, results["stn"], data, config, device),
        "ablation": ablations(config, out, data, device),
        "zoom_factor": config.zoom_factor,
        "sigma": config.sigma,
        "device": str(device),
        "expand_seconds": expand_seconds,
        "wall_seconds": time.perf_counter() - t_start,
    }


def _magnification(result, config: STNDeformConfig) -> dict[str, Any]:
    """Per seed: how much more the STN magnifies zoomed-out test images than originals,
    averaged over the scored epochs (a full undo of the zoom-out is ``zoom_factor``)."""
    per_seed = [magnification(result.rows(k)[-config.scored :]) for k in range(config.seeds)]
    return {"per_seed": per_seed, "full_undo": config.zoom_factor}


def final_theta(out: Path, result, data: StudyData, config, device) -> dict[str, Any]:
    """Every seed's final STN on every test image: its θ statistics per kind and example
    warps (one row per seed and kind), and the first seed's θ-scale histogram."""
    from mnistlab.figures import stn as figures

    x_te = data.pool.x[data.n_train :]
    shown = {
        name: torch.nonzero(data.test_kinds == k).flatten()[:SHOWN] for k, name in enumerate(KINDS)
    }
    by_seed, rows = [], {}
    for k in range(config.seeds):
        thetas, warped = thetas_and_outputs(trained_model(result, k, True, device), x_te, device)
        parts = decompose_theta(thetas)
        iso = iso_scale(parts)
        stats = {}
        for j, name in enumerate(KINDS):
            mask = data.test_kinds == j
            stats[name] = deformation_stats({p: v[mask] for p, v in parts.items()})
            rows[f"seed {result.rows(k)[0]['seed']}: {name}"] = (
                x_te[shown[name]],
                warped[shown[name]],
            )
        by_seed.append(stats)
        if k == 0:
            scales = {n: iso[data.test_kinds == j].tolist() for j, n in enumerate(KINDS)}
            figures.scale_by_kind(out, scales, config.zoom_factor)
    figures.kind_examples(
        out,
        {label: (a.numpy(), b.numpy()) for label, (a, b) in rows.items()},
        stem="deform_examples",
    )
    return {"deformations_by_seed": by_seed}
