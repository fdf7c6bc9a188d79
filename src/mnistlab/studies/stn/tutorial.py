"""Study ``stn``: the tutorial's spatial transformer on MNIST — accuracy against the same CNN
without it, and what it learned.

Every seed's STN is inspected, not only the first: its θ on every test image is decomposed into
rotation, scales, shear and translation (which deformations it uses, seed by seed), its θ
statistics are recorded every epoch on fixed test images, and the θ ablations say whether its
accuracy needs each image's own warp (:mod:`.theta`).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch

from mnistlab import schemas
from mnistlab.data import COUNTS, load_mnist
from mnistlab.executors import Cell
from mnistlab.progress import Progress
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.studies.stn.common import (
    MODELS,
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
    largest_deformations,
    thetas_and_outputs,
)
from mnistlab.train.engine import Pool

STUDY = "stn"
SHOWN = 8  # test images per seed in the per-seed grid


def _limited(images, labels, limit):
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def _data(config: STNConfig, data_dir: Path | str | None) -> StudyData:
    x_tr, y_tr = _limited(*load_mnist("train", data_dir), config.limit_train)
    x_te, y_te = _limited(*load_mnist("test", data_dir), config.limit_test)
    pool = Pool(torch.cat([x_tr, x_te]), torch.cat([y_tr, y_te]))
    return StudyData(pool, len(y_tr), torch.zeros(len(y_te), dtype=torch.long), ("all",))


def cells(
    config: STNConfig,
    out: Path,
    data_dir: Path | str | None,
    device: torch.device,
    progress: Progress | None,
) -> list[Cell]:
    """The study's cells: built here, or by a worker process that runs one of them
    (``run all --jobs``), which is why this is a module-level function of plain arguments."""
    return model_cells(config, out, partial(_data, config, data_dir), device, progress, STUDY)


def run(
    config: STNConfig, out_dir: Path | str, env: Env | None = None
) -> schemas.STNTutorialMetrics:
    """Train STN and baseline over seeds, analyse θ; write results/figures to ``out_dir``."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config: STNConfig, run_: StudyRun) -> dict:
    """The study's work inside its opened run folder; returns its metrics."""
    from mnistlab.figures import stn as figures

    out, device = run_.out, run_.device
    t_start = time.perf_counter()
    run_.executor.run(cells(config, out, run_.data_dir, device, run_.cell_progress), root=out)
    results = load_cells(config, out)
    data = _data(config, run_.data_dir)
    x_te = data.pool.x[data.n_train :]
    y_te = data.pool.y[data.n_train :]
    models = {m: summarise_model(r, (), config.scored) for m, r in results.items()}
    figures.seed_curves(out, {m: s["curves_by_seed"] for m, s in models.items()}, STUDY)
    per_seed, warped_by_seed = [], []
    for k in range(config.seeds):
        net = trained_model(results["stn"], k, True, device)
        thetas, warped = thetas_and_outputs(net, x_te, device)
        parts = decompose_theta(thetas)
        per_seed.append(deformation_stats(parts))
        warped_by_seed.append(warped[:SHOWN].numpy())
        if k == 0:
            examples = largest_deformations(parts)
            figures.theta_figures(
                out,
                {n: v.numpy() for n, v in parts.items()},
                x_te.numpy(),
                warped.numpy(),
                examples,
            )
    figures.seeds_grid(out, x_te[:SHOWN].numpy(), warped_by_seed, models["stn"]["seeds"])
    for m, r in results.items():  # every seed's final model, image by image (McNemar)
        models[m]["test_correct_by_seed"] = [
            correct_on(trained_model(r, k, m == "stn", device), x_te, y_te, device)
            for k in range(config.seeds)
        ]
    return {
        "kinds": ["all"],
        "score_epochs": config.scored,
        "models": models,
        "theta_by_seed": theta_series(results["stn"]),
        "deformations_by_seed": per_seed,
        "examples": examples,
        "ablation": ablations(config, out, data, device),
        "padding": "grid_sample samples the un-normalised image (background 0 = zero "
        "padding); normalisation happens after the transformer",
        "device": str(device),
        "wall_seconds": time.perf_counter() - t_start,
        "n_train": min(config.limit_train or sum(COUNTS["train"]), sum(COUNTS["train"])),
        "n_test": len(y_te),
        "model_names": list(MODELS),
    }
