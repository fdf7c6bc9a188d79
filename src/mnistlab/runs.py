"""Results folders shared by every study: config hashes, one writer per folder, resume.

A run folder is ``results/<study>/<config-hash>/``. ``metrics.json`` is written last, so its
presence is the single "this run finished" marker; an interrupted run never looks complete
and re-running the same command resumes it. Every JSON file is written with its digest
(:mod:`mnistlab.io`) and verified on read. A lock on the folder gives it one writer: a second
process on the same configuration is told which PID holds it instead of redoing the work.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mnistlab import __version__
from mnistlab.errors import AlreadyRunningError, CorruptFileError, MnistlabError
from mnistlab.io import atomic_write_bytes, atomic_write_text, plain, read_json, write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, one writer is then the user's job
    fcntl = None  # type: ignore[assignment]

# Bump when what a study writes changes shape: old folders are then never mistaken for new.
RESULTS_FORMAT = 2
COMPLETE_MARKER = "metrics.json"
MANIFEST = "manifest.json"  # written by ``run all``: which folder holds each study
LOCK = ".lock"

__all__ = [
    "COMPLETE_MARKER",
    "Run",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_text",
    "config_dict",
    "config_hash",
    "environment",
    "is_complete",
    "read_finished",
    "read_json",
    "results_root",
    "run_dir",
    "write_json",
]


def atomic_write_csv(path: Path | str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Dict rows as CSV (an export for people and spreadsheets; the tool never reads it)."""
    rows = list(rows)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (or mapping)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return plain(dataclasses.asdict(config))
    return plain(dict(config))


def config_hash(config: Any, length: int = 12) -> str:
    """Digest of every field of a config and the results format: two runs share a folder iff
    both match. The device is part of it (CPU and GPU arithmetic differ in the last bits);
    the CLI resolves ``auto`` first, so ``auto`` and ``cpu`` on a CPU share a folder."""
    body = {"config": config_dict(config), "results_format": RESULTS_FORMAT}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def results_root(root: Path | str | None = None) -> Path:
    """The results root: ``root`` (the CLI passes ``--results`` or ``MNISTLAB_RESULTS``), else
    ``./results``."""
    return Path(root) if root is not None else Path("results")


def run_dir(root: Path | str, study: str, config: Any) -> Path:
    """``<root>/<study>/<config-hash>``: re-running the same config finds the same folder."""
    return Path(root) / study / config_hash(config)


def is_complete(folder: Path | str) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


SESSION_START = ": results in "  # the line each session of a study logs first (suite)


def sessions(folder: Path | str) -> int:
    """How many sessions wrote this run (``run.log`` appends across resumes): a study's
    wall time counts only the session that finished it, so a reader must know there were more."""
    log = Path(folder) / "run.log"
    try:
        with log.open(encoding="utf-8", errors="replace") as f:
            return sum(SESSION_START in line for line in f)
    except OSError:
        return 0


def read_finished(path: Path | str) -> dict[str, Any]:
    """A finished result file; a corrupt one is an error that says how to recompute it."""
    try:
        return read_json(path)
    except CorruptFileError as exc:
        raise MnistlabError(
            f"{exc}. It is a finished result: re-run the same command with --force to recompute it"
        ) from None


def environment() -> dict[str, Any]:
    """Versions and hardware: recorded with every run so numbers can be traced."""
    import numpy

    env: dict[str, Any] = {
        "mnistlab": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": numpy.__version__,
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        from mnistlab.models import native  # results differ from torch's layers in the last bits

        env["conv_pool"] = native.describe()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return env


def _clear(folder: Path, keep: tuple[str, ...]) -> None:
    for child in folder.iterdir():
        if child.name in keep:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


class Run:
    """The one writer of a run folder, for the duration of a ``with`` block.

    On entry: take the folder's lock (or fail with the PID that holds it), clear it with
    ``force``, and either expose the finished metrics (``finished``) or write ``config.json``
    (the resolved config, provenance, environment) before any training starts.
    """

    def __init__(
        self,
        folder: Path | str,
        config: Any,
        *,
        force: bool = False,
        provenance: Mapping[str, Any] | None = None,
        **extra: Any,
    ):
        self.folder = Path(folder)
        self.config, self.force = config, force
        self.provenance, self.extra = dict(provenance or {}), extra
        self.finished: dict[str, Any] | None = None
        self._fd: int | None = None

    def __enter__(self) -> Run:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        if self.force:
            _clear(self.folder, keep=(LOCK, "run.log"))
        marker = self.folder / COMPLETE_MARKER
        if marker.is_file():
            self.finished = read_finished(marker)
            return self
        payload = {
            "data": self.provenance,
            "config": config_dict(self.config),
            "config_hash": config_hash(self.config),
            "results_format": RESULTS_FORMAT,
            "seed": getattr(self.config, "seed", None),
            "environment": environment(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.extra,
        }
        write_json(self.folder / "config.json", payload)
        return self

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``metrics.json`` last: from now on the run counts as complete."""
        write_json(self.folder / COMPLETE_MARKER, dict(metrics))
        return dict(metrics)

    def _lock(self) -> None:
        if fcntl is None:
            return
        path = self.folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunningError(
                f"{self.folder} is already being computed by PID {holder} (same configuration); "
                "wait for it to finish, or stop it, then re-run to resume"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
