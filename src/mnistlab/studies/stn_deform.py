"""Study: the STN on MNIST grown 3× with elastic and 4× zoom-out copies — does it undo them?

Train 60k → 180k and test 10k → 30k (``data.expand``), the kind of every image kept, so accuracy
is reported per kind, with and without the transformer. Whether the STN "undoes" a deformation
is measured, not assumed: the θ scale it applies to zoomed-out inputs against originals (undoing
a 4× zoom-out needs a scale of about 1/4), and the accuracy gain per kind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import runs
from mnistlab.data import KINDS, DeformParams, expand, load_mnist
from mnistlab.progress import Progress
from mnistlab.stats import mean_ci
from mnistlab.studies.stn import (
    STNConfig,
    begin_run,
    decompose_theta,
    deformation_stats,
    load_trained,
    thetas_and_outputs,
    train_model,
)

STUDY = "stn-deform"


@dataclass(frozen=True)
class STNDeformConfig(STNConfig):
    """The STN study's settings plus the deformations; one seed and a larger train subset
    scored per epoch (15k of 180k) by default."""

    seeds: int = 1
    train_eval_size: int = 15_000
    sigma: float = 2.0
    zoom_factor: float = 4.0
    deform_seed: int = 0


def _expanded(split: str, limit: int | None, cfg: STNDeformConfig, seed: int):
    images, labels = load_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    params = DeformParams(sigma=cfg.sigma, zoom_factor=cfg.zoom_factor)
    return expand(images, labels, seed=seed, params=params)


def _per_kind_final(histories: list[list[dict]]) -> dict[str, tuple[float, float]]:
    return {k: mean_ci([h[-1][f"test_acc_{k}"] for h in histories]) for k in ("all", *KINDS)}


def run(
    config: STNDeformConfig,
    out_dir: Path | str,
    *,
    progress: Progress | None = None,
    force: bool = False,
) -> dict:
    """Expand, train STN and baseline, analyse per kind; write everything to ``out_dir``."""
    from mnistlab.studies import stn_figures

    progress = progress or Progress()
    out = Path(out_dir)
    device, done = begin_run(config, out, force)
    if done is not None:
        return done
    t_start = time.perf_counter()
    progress.message("stn-deform: building the expanded train and test sets (cached)")
    t0 = time.perf_counter()
    train = _expanded("train", config.limit_train, config, config.deform_seed)
    test = _expanded("test", config.limit_test, config, config.deform_seed + 1)
    expand_seconds = time.perf_counter() - t0
    histories: dict[str, list] = {"stn": [], "baseline": []}
    for s in range(config.seeds):
        seed = config.seed + s
        for name in ("stn", "baseline"):
            _, hist = train_model(
                use_stn=name == "stn",
                train=(train.images, train.labels, train.kind),
                test=(test.images, test.labels, test.kind),
                cfg=config,
                seed=seed,
                ckpt=out / "checkpoints" / f"{name}_seed{seed}.pt",
                progress=progress,
                description=f"stn-deform: {name} seed {seed}",
            )
            runs.atomic_write_csv(out / f"history_{name}_seed{seed}.csv", hist)
            histories[name].append(hist)
    model = load_trained(out / "checkpoints" / f"stn_seed{config.seed}.pt", True, device)
    thetas, warped = thetas_and_outputs(model, test.images, device)
    parts = decompose_theta(thetas)
    iso = torch.sqrt(parts["scale_x"].abs() * parts["scale_y"].abs())
    scale, by_kind, scale_lists = {}, {}, {}
    for k, name in enumerate(KINDS):
        mask = test.kind == k
        scale[name] = float(iso[mask].mean())
        scale_lists[name] = iso[mask].tolist()
        by_kind[name] = deformation_stats({p: v[mask] for p, v in parts.items()})
    stn_figures.accuracy_curves(out, histories, "stn-deform", kinds=("all", *KINDS))
    stn_figures.kind_examples(out, test.images, warped, test.kind, ("zoom", "elastic", "original"))
    stn_figures.scale_by_kind(out, scale_lists)
    metrics: dict[str, Any] = {
        "n_train": len(train),
        "n_test": len(test),
        "expand_seconds": expand_seconds,
        "final_test_acc": {m: _per_kind_final(h) for m, h in histories.items()},
        "final_train_acc": {
            m: {k: mean_ci([x[-1][f"train_acc_{k}"] for x in h]) for k in ("all", *KINDS)}
            for m, h in histories.items()
        },
        "best_test_acc": {
            m: mean_ci([max(r["test_acc_all"] for r in x) for x in h]) for m, h in histories.items()
        },
        "mean_scale_by_kind": scale,
        "deformations_by_kind": by_kind,
        "zoom_factor": config.zoom_factor,
        "epoch_seconds": {
            m: sum(r["epoch_seconds"] for x in h for r in x) / sum(len(x) for x in h)
            for m, h in histories.items()
        },
        "device": str(device),
        "wall_seconds": time.perf_counter() - t_start,
    }
    runs.finish_run(out, metrics)
    return metrics
