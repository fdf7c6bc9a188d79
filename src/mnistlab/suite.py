"""``run all``: every study of a profile and protocol, with a manifest — one after another, or
side by side in worker processes (``--jobs``, :mod:`mnistlab.parallel`).

The studies, their profiles and summary lines come from :mod:`mnistlab.registry`. ``full``
runs the studies as specified; ``quick`` is a demonstration that finishes in a few minutes on a
2-core CPU (fewer seeds and epochs, test subsets) and is labelled as such on every page of its
report. Each study's results live under its config hash, so a finished study is loaded, not
recomputed, and an interrupted one resumes where its checkpoints left it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnistlab import parallel, registry, runs
from mnistlab.errors import MnistlabError
from mnistlab.progress import Progress
from mnistlab.studies.opening import Env

MANIFEST = runs.MANIFEST


@contextmanager
def _logging_to(folder: Path) -> Iterator[None]:
    """The study's log lines also go to ``<run folder>/run.log`` (appending across resumes)."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("mnistlab")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def execute_study(
    study: str, config: Any, env: Env, *, root: Path, track: str = "none", **options: Any
) -> tuple[Path, dict]:
    """Run one study in ``root/<study>/<config-hash>`` with a log file (``options``: the
    study's own keywords); with ``track``, log the finished run to the tracker."""
    folder = runs.run_dir(root, study, config)
    progress = env.progress or Progress()
    with _logging_to(folder):
        progress.message(f"{study}{runs.SESSION_START}{folder}")
        out = registry.get(study).run(config, folder, env, **options)
    if track == "mlflow":
        from mnistlab import tracking

        if runs.is_complete(folder):
            rid = tracking.log_mlflow(study, folder, os.environ.get("MLFLOW_TRACKING_URI"))
            progress.message(f"{study}: logged to MLflow (run {rid})")
        else:
            progress.message(f"{study}: not finished (some parts only): not logged to MLflow")
    return folder, out


@dataclass(frozen=True)
class Settings:
    """What every study of one ``run all`` shares (picklable: workers get a copy)."""

    root: Path
    force: bool = False
    data_dir: Path | None = None
    track: str = "none"
    executor: Any = None  # where a study's cells run (local processes get the default)


def resolve_jobs(jobs: int | str, device: str, executor: str = "local") -> int:
    """``auto``: two studies at a time on a CPU with two or more cores (see
    :mod:`mnistlab.parallel`), one on a GPU (they would share it) or with Ray (it spreads the
    cells itself); a number is taken as asked, but Ray's executor cannot travel to a worker."""
    if jobs != "auto":
        if int(jobs) > 1 and executor != "local":
            raise MnistlabError(
                "--jobs runs studies in local worker processes: with --executor ray, use --jobs 1"
            )
        return int(jobs)
    if executor != "local" or (os.cpu_count() or 1) < 2:
        return 1
    from mnistlab.train.devices import pick_device

    return 1 if pick_device(device).type != "cpu" else 2


def _run_job(job: parallel.Job, here: parallel.JobContext) -> dict | None:
    """What a worker process runs: a study, or one cell of it (``job.payload``: study, config,
    options, settings)."""
    study, config, options, s = job.payload
    if job.cell is not None:
        return _run_cell(study, config, job.cell, s, here.progress)
    executor = here.executor if registry.get(study).cells_path else None
    env = Env(here.progress, s.force, s.data_dir, executor)
    return execute_study(study, config, env, root=s.root, track=s.track, **options)[1]


def _run_cell(study: str, config: Any, key: str, s: Settings, progress: Progress) -> None:
    """One cell of a study whose worker holds its folder and waits for this cell's result
    file: the cell writes into that folder on the worker's behalf (checkpoints included, so
    an interrupted cell resumes wherever it runs next)."""
    from mnistlab.train.devices import pick_device

    folder = runs.run_dir(s.root, study, config)
    with _logging_to(folder):
        build = registry.get(study).cells
        cells = build(config, folder, s.data_dir, pick_device(config.device), progress)
        cell = next(c for c in cells if c.key == key)
        if not cell.done():
            cell.run()


def run_one(
    study: str,
    config: Any,
    settings: Settings,
    progress: Progress,
    options: dict[str, Any],
    workers: int,
) -> tuple[Path, dict]:
    """``mnistlab run STUDY``: here, or — for a study with independent cells on a CPU with
    ``workers`` > 1 — in a worker process that hands its other cells to a second worker
    (:mod:`mnistlab.parallel`), so a study run alone uses every core as ``run all`` does, with
    the same threads per process (and therefore the same numbers as ``make run``)."""
    folder = runs.run_dir(settings.root, study, config)
    finished = runs.is_complete(folder) and not settings.force
    if workers < 2 or registry.get(study).cells_path is None or finished:
        env = Env(progress, settings.force, settings.data_dir, settings.executor)
        return execute_study(
            study, config, env, root=settings.root, track=settings.track, **options
        )
    job = parallel.Job(study, (study, config, options, replace(settings, executor=None)))
    out: dict[str, dict] = {}
    parallel.run_jobs(
        [job],
        _run_job,
        workers=workers,
        progress=progress,
        on_result=lambda job, metrics, seconds: out.update(metrics=metrics),
    )
    return folder, out["metrics"]


def run_all(
    *,
    profile: str,
    settings: Settings,
    seed: int,
    progress: Progress,
    device: str = "auto",
    protocol: str = "both",
    with_: tuple[str, ...] = (),
    jobs: int | str = 1,
) -> dict[str, Any]:
    """Run the studies of ``profile`` and write ``root/manifest.json``: one after another, or
    ``jobs`` at a time in worker processes (:mod:`mnistlab.parallel`)."""
    configs = registry.profile_configs(profile, seed, device, protocol, with_)
    root = settings.root
    workers = resolve_jobs(jobs, device, getattr(settings.executor, "name", "local"))
    manifest = _manifest(root, profile, protocol, with_, workers)
    todo = []
    for study, config in configs.items():
        if runs.is_complete(runs.run_dir(root, study, config)) and not settings.force:
            folder, metrics = _here(study, config, settings, progress)
            _record(manifest, root, progress, study, folder, metrics, None)
        else:
            todo.append((study, config))
    if workers > 1 and len(todo) > 1:
        jobs_ = [_job(study, config, settings, profile) for study, config in todo]
        parallel.run_jobs(
            jobs_,
            _run_job,
            workers=workers,
            progress=progress,
            on_result=lambda job, metrics, seconds: _record(
                manifest,
                root,
                progress,
                job.name,
                runs.run_dir(root, job.name, job.payload[1]),
                metrics,
                seconds,
            ),
        )
    else:
        for study, config in todo:
            t0 = time.perf_counter()
            folder, metrics = _here(study, config, settings, progress)
            _record(manifest, root, progress, study, folder, metrics, time.perf_counter() - t0)
    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs.write_json(root / MANIFEST, manifest)
    return manifest


def _job(study: str, config: Any, settings: Settings, profile: str) -> parallel.Job:
    """A worker's job: after the studies whose caches it reads, sized by its usual minutes."""
    entry = registry.get(study)
    payload = (study, config, dict(entry.in_suite), replace(settings, executor=None))
    return parallel.Job(study, payload, entry.after, entry.minutes.get(profile, 1.0))


def _here(study: str, config: Any, settings: Settings, progress: Progress) -> tuple[Path, dict]:
    """Run (or load) one study in this process: (folder, metrics)."""
    env = Env(progress, settings.force, settings.data_dir, settings.executor)
    options = registry.get(study).in_suite
    return execute_study(study, config, env, root=settings.root, track=settings.track, **options)


def _manifest(root: Path, profile: str, protocol: str, with_: tuple, workers: int) -> dict:
    manifest: dict[str, Any] = {
        "profile": profile,
        "protocol": protocol,
        "with": list(with_),
        "command": " ".join(["mnistlab", *sys.argv[1:]]) or "mnistlab",
        "jobs": workers,
        "folders": {},
        "wall_seconds": {},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    old = root / MANIFEST
    if old.is_file():  # keep the record of wall times from an earlier (interrupted) call
        try:
            prev = runs.read_json(old)
        except MnistlabError:
            prev = {}  # a damaged manifest is rewritten below
        if prev.get("profile") == profile:
            manifest["wall_seconds"] = prev.get("wall_seconds", {})
            manifest["folders"] = dict(prev.get("folders", {}))  # other protocols' studies
    return manifest


def _record(
    manifest: dict,
    root: Path,
    progress: Progress,
    study: str,
    folder: Path,
    metrics: dict,
    seconds: float | None,
) -> None:
    """One study done: its folder and wall time (None: it was finished already) in the
    manifest, its summary line shown."""
    if seconds is not None:
        manifest["wall_seconds"][study] = seconds
    manifest["folders"][study] = str(folder.relative_to(root))
    done = " (already finished: loaded)" if seconds is None else ""
    progress.message(registry.summary_line(study, metrics) + done)
    runs.write_json(root / MANIFEST, manifest)


__all__ = ["Settings", "execute_study", "resolve_jobs", "run_all", "run_one"]
