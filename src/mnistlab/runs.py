"""Results folders shared by every study: atomic writes, config hashes, manifests, resume.

A run folder is ``results/<study>/<run-id>/``. ``metrics.json`` is written last and atomically,
so its presence is the single "this run finished" marker: an interrupted run never looks
complete, and a half-written file is never read (temp file + ``os.replace``, as timm's
checkpoint saver does).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mnistlab import __version__

COMPLETE_MARKER = "metrics.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj))


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def atomic_write_csv(path: Path | str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write dict rows as CSV; the header is the union of keys in first-seen order."""
    rows = list(rows)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (or mapping)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return json.loads(to_json(dataclasses.asdict(config)))
    return json.loads(to_json(dict(config)))


def config_hash(config: Any, length: int = 12) -> str:
    """Stable digest of every field of a config: two runs share a folder iff configs match."""
    canonical = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def results_root(root: Path | str | None = None) -> Path:
    """``--results`` beats ``MNISTLAB_RESULTS`` beats ``./results``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("MNISTLAB_RESULTS", "results"))


def run_dir(root: Path | str, study: str, config: Any) -> Path:
    """``<root>/<study>/<config-hash>``: re-running the same config finds the same folder."""
    return Path(root) / study / config_hash(config)


def is_complete(folder: Path | str) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


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
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return env


def start_run(folder: Path | str, config: Any, *, seed: int | None = None, **extra: Any) -> Path:
    """Write ``config.json`` (resolved config + environment) before any training starts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from mnistlab.data.mnist import mnist_info  # the data a run trains on, with its digests

    info = mnist_info()
    payload = {
        "data": {"source": info.source, "location": info.location, "sha256": info.digests},
        "config": config_dict(config),
        "config_hash": config_hash(config),
        "seed": seed,
        "environment": environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    atomic_write_json(folder / "config.json", payload)
    return folder


def finish_run(folder: Path | str, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` last: from now on the run counts as complete."""
    return atomic_write_json(Path(folder) / COMPLETE_MARKER, dict(metrics))


def clear_run(folder: Path | str, keep: tuple[str, ...] = ("run.log",)) -> None:
    """Delete a run's results for ``--force`` (the open log file survives)."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name in keep:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def begin(folder: Path | str, config: Any, *, force: bool, **extra: Any) -> dict | None:
    """The common opening of a study's ``run``: ``--force`` clears the folder; a finished run
    returns its metrics (nothing is retrained); otherwise ``config.json`` is written and None
    returned. An interrupted run keeps its checkpoints, so training resumes from them."""
    folder = Path(folder)
    if force:
        clear_run(folder)
    if is_complete(folder):
        return read_json(folder / COMPLETE_MARKER)
    start_run(folder, config, seed=getattr(config, "seed", None), **extra)
    return None
