"""Runs made visible where people look at runs (``--track mlflow``).

The results folder stays the source of truth: after a study finishes, its resolved config,
every per-epoch history (``history*.csv``, ``curves.csv``), the headline metrics and the
figures are read from the folder and logged to MLflow — the tracking URI from
``MLFLOW_TRACKING_URI``, else a SQLite store ``<results>/mlflow.db`` (MLflow 3 refuses its old
file store by default). A history row of one model
of a stack becomes metrics named ``<file>/model_stn/seed_0/<column>`` at step ``epoch``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnistlab import runs
from mnistlab.errors import MnistlabError

TRACKERS = ("none", "mlflow")
INSTALL = "pip install 'mnistlab[mlflow]'"
_MEMBER_KEYS = ("model", "variant", "seed", "size", "lr", "fold", "trial", "recipe")
_NOT_METRICS = {"member", "epoch", *_MEMBER_KEYS}


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not str(k).startswith("_"):
                yield from _flatten(v, f"{prefix}{k}.")
    elif (
        isinstance(obj, list | tuple)
        and len(obj) == 2
        and all(isinstance(v, int | float) for v in obj)
    ):  # (mean, 95 % CI half-width)
        yield prefix[:-1], obj[0]
        yield f"{prefix}ci95", obj[1]
    else:
        yield prefix[:-1], obj


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def history_metrics(folder: Path) -> list[tuple[str, float, int]]:
    """(name, value, step) for every numeric column of every history row in ``folder``."""
    out = []
    for path in sorted([*folder.rglob("history*.csv"), *folder.rglob("curves.csv")]):
        stem = path.relative_to(folder).with_suffix("").as_posix().replace("/", ".")
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                who = "/".join(
                    f"{k}_{row[k]}" for k in _MEMBER_KEYS if row.get(k) not in (None, "")
                )
                step = int(float(row.get("epoch") or 0))
                for col, raw in row.items():
                    if col in _NOT_METRICS or (v := _number(raw)) is None:
                        continue
                    name = "/".join(p for p in (stem, who, col) if p)
                    out.append((_safe(name), v, step))
    return out


def _safe(name: str) -> str:
    """MLflow metric names: letters, digits, ``_-./`` and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)[:250]


def log_mlflow(study: str, folder: Path, uri: str | None = None) -> str:
    """Log one finished run folder to MLflow (``uri``: a tracking URI; default a SQLite store
    beside the results); returns the MLflow run id."""
    try:
        import mlflow
        from mlflow.entities import Metric, Param
    except ImportError:
        raise MnistlabError(f"--track mlflow needs MLflow: {INSTALL}") from None
    mlflow.set_tracking_uri(uri or f"sqlite:///{(folder.parent.parent / 'mlflow.db').resolve()}")
    config = runs.read_finished(folder / "config.json")
    metrics = runs.read_finished(folder / runs.COMPLETE_MARKER)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("mnistlab") or client.get_experiment(
        client.create_experiment("mnistlab")
    )
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"{study}-{folder.name}",
        tags={"mnistlab.study": study, "mnistlab.folder": str(folder.resolve())},
    )
    rid = run.info.run_id
    params = [
        Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
        for k, v in _flatten(config["config"])
    ]
    series = [Metric(name, value, 0, step) for name, value, step in history_metrics(folder)]
    finals = [
        Metric(_safe(f"final.{k}"), v, 0, 0)
        for k, raw in _flatten(metrics)
        if not isinstance(raw, str) and (v := _number(raw)) is not None
    ]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i : i + 100])
    for batch in (series, finals):
        for i in range(0, len(batch), 1000):
            client.log_batch(rid, metrics=batch[i : i + 1000])
    for png in sorted(folder.rglob("*.png")):
        sub = png.parent.relative_to(folder).as_posix()
        client.log_artifact(rid, str(png), artifact_path=None if sub == "." else sub)
    client.set_terminated(rid)
    return rid
