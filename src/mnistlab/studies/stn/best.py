"""Study ``stn-best``: the tutorial's spatial transformer, trained the way its practitioners
train it — can *an* STN learn to undo the 4× zoom-out, where the tutorial's recipe did not?

The network, the data (MNIST + elastic + 4× zoom-out copies), the seeds and the primary score
are ``stn-deform``'s; only the recipe differs, chosen on validation data from the training set:

* the search holds out the last ``val_digits`` training digits *with their two copies* (a digit
  and its deformed copies on the same side), trains every recipe of :data:`RECIPES` on the
  first ``search_digits`` digits and their copies for ``search_epochs``, and keeps the one with
  the highest mean validation accuracy over its last epochs (the primary score's rule);
* the chosen recipe then trains every seed on the whole 180k set for the study's epochs, and is
  scored as the as-specified study is (mean test accuracy over the last epochs, per kind; θ
  magnification of zoomed-out digits; θ ablations).

The recipes come from the advice practitioners give for STNs: a decaying learning rate, a
slower localisation network (fxia22/stn.pytorch suggests multipliers of 1e-3–1e-4; the Caffe
model lowers the θ layer's rate), and Adam at 1e-4 (the stable variant linked from
pytorch/tutorials#1117). The report sets the result beside ``stn-deform``'s (same seeds, same
data), so "can an STN learn it?" stands beside "did the tutorial's one?".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mnistlab import runs
from mnistlab.config import option
from mnistlab.data import COUNTS, KINDS
from mnistlab.executors import Cell, host_info
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.studies.opening import Env, StudyRun, open_run
from mnistlab.studies.stn.common import (
    STACK_COST,
    Recipe,
    StudyData,
    ablations,
    summarise_model,
    theta_series,
    train_seeds,
)
from mnistlab.studies.stn.deform import STNDeformConfig, expanded, final_theta
from mnistlab.studies.stn.deform import study_data as deform_data
from mnistlab.studies.stn.theta import magnification
from mnistlab.train.checkpoint import load_checkpoint
from mnistlab.train.engine import Pool, StackResult

STUDY = "stn-best"
RECIPES = {
    "tutorial": Recipe(),
    "cosine": Recipe(schedule="cosine"),
    "cosine-loc0.1": Recipe(schedule="cosine", loc_scale=0.1),
    "cosine-loc0.01": Recipe(schedule="cosine", loc_scale=0.01),
    "adam-1e-4": Recipe(optimizer="adam", lr=1e-4),
}
PARTS = 2  # the final seeds train as this many stacks, so that two workers can share them


@dataclass(frozen=True)
class STNBestConfig(STNDeformConfig):
    """``stn-deform``'s data, network, seeds and score; the recipe searched on validation."""

    recipes: tuple[str, ...] = option(
        tuple(RECIPES), "recipes the search compares", cli="", choices=tuple(RECIPES)
    )
    search_digits: int = option(
        20_000, "training digits (each with its 2 copies) the search trains on", lo=1, hi=10**6
    )
    val_digits: int = option(
        10_000, "the last N training digits (with copies): the search's validation", lo=1, hi=10**6
    )
    search_epochs: int = option(10, "epochs of the search", unit="epochs", lo=1, hi=10_000)


def split(n_digits: int, cfg: STNBestConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(search-training, validation) indices into the expanded training set of ``n_digits``
    digits (originals, then elastic, then zoom-out copies): a digit's copies share its side."""
    val_n = min(cfg.val_digits, n_digits // 2)
    fit_n = min(cfg.search_digits, n_digits - val_n)

    def with_copies(digits: torch.Tensor) -> torch.Tensor:
        return torch.cat([digits + k * n_digits for k in range(3)])

    return with_copies(torch.arange(fit_n)), with_copies(torch.arange(n_digits - val_n, n_digits))


def search(cfg: STNBestConfig, out: Path, data_dir, device, progress) -> dict[str, Any]:
    """Every recipe on the search split, one seed (the study's first), scored on validation
    by the primary score's rule; the test images are never read."""
    train = expanded("train", cfg.limit_train, cfg, cfg.deform_seed, data_dir)
    fit, val = split(len(train) // 3, cfg)
    both = torch.cat([fit, val])
    pool = Pool(train.images[both], train.labels[both], train.kind[both], KINDS)
    kinds = pool.kind[len(fit) :]
    data = StudyData(pool, len(fit), kinds, KINDS)
    short = _search_config(cfg)
    table = []
    for name in cfg.recipes:
        res = train_seeds(
            "stn", short, data, device=device, out=out / "search", progress=progress,
            description=f"{STUDY}: search {name}", recipe=RECIPES[name], name=f"search-{name}",
        )  # fmt: skip
        table.append({"recipe": name, "val_score": summarise_model(res, (), short.scored)})
    for row in table:
        row["val_score"] = row["val_score"]["per_seed_primary"]["all"][0]
    best = max(range(len(table)), key=lambda i: (table[i]["val_score"], -i))
    return {"grid": table, "chosen": table[best]["recipe"], "n_fit": len(fit), "n_val": len(val)}


def _search_config(cfg: STNBestConfig) -> STNBestConfig:
    """The search's runs: one seed, ``search_epochs``, θ probed on few images."""
    return replace(cfg, seeds=1, epochs=cfg.search_epochs, theta_images=min(cfg.theta_images, 200))


def _parts(cfg: STNBestConfig) -> list[list[int]]:
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    size = -(-len(seeds) // PARTS)
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def cells(
    config: STNBestConfig,
    out: Path,
    data_dir: Path | str | None,
    device: torch.device,
    progress: Progress | None,
) -> list[Cell]:
    """The search, then the chosen recipe's seeds as :data:`PARTS` stacks (independent of one
    another, so a second worker can take one)."""
    chosen = out / "search.json"

    def run_search() -> None:
        bar = progress or default_progress()
        runs.write_json(chosen, search(config, out, data_dir, device, bar))

    cells_ = [Cell("search", run_search, done=chosen.is_file, weight=1.0)]
    for i, seeds in enumerate(_parts(config)):
        path = out / "cells" / f"stn-{i}.json"

        def run_part(seeds: list[int] = seeds, path: Path = path, i: int = i) -> None:
            recipe = RECIPES[runs.read_finished(chosen)["chosen"]]
            res = train_seeds(
                "stn", config, deform_data(config, data_dir), device=device, out=out,
                progress=progress or default_progress(), recipe=recipe, seeds=seeds,
                name=f"stn-{i}", description=f"{STUDY}: stn × {len(seeds)} seed(s)",
            )  # fmt: skip
            runs.write_json(path, {**_saved(res), "seeds": seeds, "where": host_info()})

        weight = STACK_COST["stn"] * len(seeds)
        cells_.append(
            Cell(f"stn-{i}", run_part, needs=("search",), done=path.is_file, weight=weight)
        )
    return cells_


def _saved(res: StackResult) -> dict[str, Any]:
    keys = ("history", "best_epoch", "epochs_run", "seconds")
    return dict(zip(keys, (res.history, res.best_epoch, res.epochs_run, res.seconds), strict=True))


def _load(config: STNBestConfig, out: Path) -> StackResult:
    """The parts as one stack result, in seed order."""
    parts = []
    for i, seeds in enumerate(_parts(config)):
        saved = runs.read_finished(out / "cells" / f"stn-{i}.json")
        states = [load_checkpoint(out / "models" / f"stn_seed{s}.pt")["model"] for s in seeds]
        res = StackResult(
            saved["history"], states, saved["best_epoch"], saved["epochs_run"], saved["seconds"]
        )
        first = seeds[0] - config.seed
        parts.append((list(range(first, first + len(seeds))), res))
    return StackResult.merge(parts)


def run(config: STNBestConfig, out_dir: Path | str, env: Env | None = None) -> dict[str, Any]:
    """Search the recipe on validation, train it over the seeds, score it as stn-deform."""
    with open_run(config, out_dir, env) as run_:
        return run_.finished or run_.finish(_compute(config, run_))


def _compute(config: STNBestConfig, run_: StudyRun) -> dict[str, Any]:
    from mnistlab.figures import stn as figures

    out, device = run_.out, run_.device
    t0 = time.perf_counter()
    run_.progress.message(f"{STUDY}: building the expanded train and test sets (cached)")
    data = deform_data(config, run_.data_dir)
    run_.executor.run(cells(config, out, run_.data_dir, device, run_.cell_progress), root=out)
    result = _load(config, out)
    found = runs.read_finished(out / "search.json")
    mag = [magnification(result.rows(k)[-config.scored :]) for k in range(config.seeds)]
    model = summarise_model(result, KINDS, config.scored)
    figures.seed_curves(out, {"stn": model["curves_by_seed"]}, STUDY, ("all", *KINDS))
    return {
        "kinds": ["all", *KINDS],
        "score_epochs": config.scored,
        "n_train": 3 * min(config.limit_train or sum(COUNTS["train"]), sum(COUNTS["train"])),
        "n_test": len(data.pool.y) - data.n_train,
        "search": found,
        "recipe": vars(RECIPES[found["chosen"]]),
        "model": model,
        **final_theta(out, result, data, config, device),
        "theta_by_seed": theta_series(result),
        "magnification": {"per_seed": mag, "full_undo": config.zoom_factor},
        "ablation": ablations(config, out, data, device),
        "zoom_factor": config.zoom_factor,
        "device": str(device),
        "wall_seconds": time.perf_counter() - t0,
    }


__all__ = ["RECIPES", "STNBestConfig", "cells", "run", "search", "split"]
