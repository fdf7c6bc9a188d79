"""Digits 0–4 → 5–9: the table of parts and how they run.

Part 1 (:mod:`.source`: baseline, batch norm, dropout; :mod:`.tune`: cross-validated
tuning) and part 2 (:mod:`.transfer`: the transfer variants). Each part writes its own verified
result file under ``<out>/<part>/`` and is skipped when that file exists, so parts can run
alone (``--part``), depend on one another (batch norm needs the tuned hyper-parameters,
transfer needs the tuned model) and resume after an interruption. Every training goes through
the engine; models of one shape train together (the K folds of a tuning trial, the dropout
rates).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistlab import runs
from mnistlab.executors import Cell, dependency_order
from mnistlab.progress import default as default_progress
from mnistlab.studies.digits import source, transfer, tune
from mnistlab.studies.digits.common import VARIANTS, CellContext, DigitsConfig
from mnistlab.studies.opening import Env, open_run


@dataclass(frozen=True)
class CellSpec:
    """One cell of the study: the cells it needs first and how it is computed."""

    needs: tuple[str, ...]
    compute: Callable[[CellContext], dict]
    file: str  # its result file, relative to the run folder


def _variant(name: str) -> CellSpec:
    needs = ("sources", "frozen5", "reuse4") if name == "unfreeze2" else ("sources",)
    if name == "scratch":  # no source model involved
        needs = ("tune",)
    return CellSpec(needs, lambda ctx: transfer.part_variant(name, ctx), f"transfer/{name}.json")


CELLS: dict[str, CellSpec] = {
    "pretrain": CellSpec((), source.part_pretrain, "pretrain/result.json"),
    "tune": CellSpec((), tune.part_tune, "tune/result.json"),
    "batchnorm": CellSpec(("tune",), source.part_batchnorm, "batchnorm/result.json"),
    "dropout": CellSpec(("tune", "batchnorm"), source.part_dropout, "dropout/result.json"),
    "sources": CellSpec(("tune",), transfer.part_sources, "sources/result.json"),
    **{v: _variant(v) for v in VARIANTS},
}
# What ``--part`` names (the command line's words) → the cells it runs.
PARTS: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain",),
    "tune": ("tune",),
    "batchnorm": ("batchnorm",),
    "dropout": ("dropout",),
    "transfer": ("frozen5", "scratch"),
    "cache": ("cached5",),
    "reuse4": ("reuse4",),
    "unfreeze": ("unfreeze2",),
}


def run(
    config: DigitsConfig,
    out_dir: Path | str,
    env: Env | None = None,
    *,
    parts: tuple[str, ...] = tuple(PARTS),
    storage: str | None = None,
) -> dict:
    """Run the requested parts (and what they depend on); return every cell's results.

    Args:
        config: the study configuration; ``out_dir`` should be ``results/digits/<hash>``.
        parts: any of :data:`PARTS`; dependencies run automatically.
        force: recompute parts whose results already exist.
    """
    from mnistlab.figures import digits as figures

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}")
    opening = open_run(config, out_dir, env, check_counts=True)
    with opening as run_:
        out, device, executor = run_.out, run_.device, run_.executor
        wanted = [name for part in parts for name in PARTS[part]]
        cells = cells_for(config, out, device, run_.cell_progress, run_.data_dir, wanted, storage)
        executor.run(cells, root=out)
        results = {c.key: runs.read_finished(out / CELLS[c.key].file) for c in cells}
        figures.write_all(out)
        if set(parts) == set(PARTS) and run_.finished is None:
            run_.finish(summarise(results))
        return results


def cells_for(
    cfg, out: Path, device, progress, data_dir, names: list[str], storage: str | None = None
) -> list[Cell]:
    """A cell per one asked for and per one they need (each reads what it needs from the
    result files of the cells before it, so it can run in another process)."""

    def read(name: str) -> dict:
        return runs.read_finished(out / CELLS[name].file)

    def run_cell(name: str) -> None:
        ctx = CellContext(cfg, out, device, progress or default_progress(), data_dir, read, storage)
        t0 = time.perf_counter()
        res = CELLS[name].compute(ctx)
        res["wall_seconds"] = time.perf_counter() - t0
        runs.write_json(out / CELLS[name].file, res)
        ctx.progress.message(f"digits: {name} done in {res['wall_seconds']:.1f} s")

    wanted = dependency_order(names, lambda name: CELLS[name].needs)
    gpus = 1.0 if device.type == "cuda" else 0.0
    return [
        Cell(
            name,
            lambda name=name: run_cell(name),
            needs=CELLS[name].needs,
            gpus=gpus,
            done=(out / CELLS[name].file).is_file,
        )
        for name in wanted
    ]


def summarise(results: dict) -> dict:
    """The headline numbers of every part (what ``metrics.json`` and the report show first)."""
    out: dict[str, Any] = {}
    if "pretrain" in results:
        p = results["pretrain"]
        out["pretrain"] = {k: p[k] for k in ("test_acc", "test_precision", "best_epoch")}
    if "tune" in results:
        t = results["tune"]
        out["tune"] = {
            k: t[k] for k in ("best", "cv_mean_acc", "cv_sd_acc", "test_acc", "test_precision")
        }
    for v in VARIANTS:
        if v in results:
            out[v] = results[v]["summary"]
    return out
