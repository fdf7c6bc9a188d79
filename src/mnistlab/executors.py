"""Where a study's independent cells run: here, one after another, or as Ray tasks.

A study splits its work into :class:`Cell`\\ s — a backbone's features and heads, a stack of
STN seeds, a digits part — each of which writes its own result file through the atomic,
verified results layer and is skipped when that file exists. The executor only decides where
and when a cell runs:

* :class:`LocalExecutor` runs them in dependency order in this process;
* :class:`RayExecutor` submits every cell whose dependencies are met as a Ray task with an
  explicit resource request (``num_cpus``, and ``num_gpus`` when the study runs on CUDA), and
  joins a running cluster (``address="auto"`` or ``host:port``) or starts a local instance.

Cells write into the results root themselves, so on a cluster that root must be storage every
node sees (NFS, a cloud file system); this keeps a cell's checkpoints resumable from any node,
keeps large artefacts out of Ray's object store, and makes a re-run skip every finished cell
exactly as a local re-run does. Every task first checks that it can see the driver's marker
file in the root, and fails with that explanation when it cannot.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.errors import MnistlabError

EXECUTORS = ("local", "ray")
INSTALL_RAY = "pip install 'mnistlab[ray]'"


@dataclass
class Cell:
    """One independent piece of a study."""

    key: str
    run: Callable[[], Any]  # writes its own result; returns something small (or None)
    needs: tuple[str, ...] = ()
    cpus: float = 1.0
    gpus: float = 0.0
    done: Callable[[], bool] = field(default=lambda: False)  # finished already (skip it)
    weight: float = 1.0  # its cost relative to the study's other cells (sizes it elsewhere)


def host_info() -> dict[str, Any]:
    """Which machine and process ran a cell (recorded in its result)."""
    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return {"host": socket.gethostname(), "pid": os.getpid(), "ray_node": node}


def dependency_order(keys: Iterable[str], needs: Callable[[str], Sequence[str]]) -> list[str]:
    """``keys`` and everything they need, each after what it needs (the one place where cell
    dependencies are resolved); a cycle or an unknown need is an error."""
    out: list[str] = []

    def visit(key: str, path: tuple[str, ...]) -> None:
        if key in out:
            return
        if key in path:
            raise ValueError(f"cells depend on each other in a cycle: {' → '.join(path)}")
        for need in needs(key):
            visit(need, (*path, key))
        out.append(key)

    for key in keys:
        visit(key, ())
    return out


def order(cells: Sequence[Cell]) -> list[Cell]:
    """The cells in dependency order (a cell after everything it needs)."""
    by_key = {c.key: c for c in cells}

    def needs(key: str) -> Sequence[str]:
        unknown = [n for n in by_key[key].needs if n not in by_key]
        if unknown:
            raise ValueError(f"cell {key} needs unknown cell {unknown[0]}")
        return by_key[key].needs

    return [by_key[k] for k in dependency_order(by_key, needs)]


class LocalExecutor:
    name = "local"

    def run(self, cells: Sequence[Cell], root: Path | None = None) -> dict[str, Any]:
        return {c.key: (None if c.done() else c.run()) for c in order(cells)}


def _task(fn: Callable[[], Any], marker: str | None) -> Any:
    """What a Ray task runs: prove the results root is shared, then the cell."""
    if marker is not None and not Path(marker).is_file():
        raise MnistlabError(
            f"this Ray node ({socket.gethostname()}) cannot see {marker}: the results root "
            "must be storage every node of the cluster sees (e.g. NFS)"
        )
    return fn()


class RayExecutor:
    """Cells as Ray tasks. ``address``: None starts a local instance, ``"auto"`` joins a
    running cluster, ``"host:port"`` joins that one."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus_per_cell: float | None = None):
        try:
            import ray
        except ImportError:
            raise MnistlabError(f"--executor ray needs Ray: {INSTALL_RAY}") from None
        self.ray = ray
        self.address, self.cpus = address, num_cpus_per_cell
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise MnistlabError(f"cannot join the Ray cluster at {address}: {exc}") from None

    def run(self, cells: Sequence[Cell], root: Path | None = None) -> dict[str, Any]:
        marker = None
        if root is not None:  # the driver's proof-of-sharing file
            marker_path = Path(root).resolve() / f".ray-driver-{uuid.uuid4().hex[:8]}"
            marker_path.write_text("written by the mnistlab driver\n")
            marker = str(marker_path)
        try:
            return self._run(order(cells), marker)
        finally:
            if marker is not None:
                Path(marker).unlink(missing_ok=True)

    def _run(self, cells: list[Cell], marker: str | None) -> dict[str, Any]:
        ray = self.ray
        remote = ray.remote(max_retries=0)(_task)
        refs: dict[str, Any] = {}
        results: dict[str, Any] = {}
        pending = [c for c in cells if not c.done()]
        for c in cells:
            if c.done():
                results[c.key] = None
        while pending or refs:
            for c in list(pending):
                if all(n in results for n in c.needs):
                    opts = {"num_cpus": self.cpus or c.cpus, "num_gpus": c.gpus}
                    refs[c.key] = remote.options(**opts).remote(c.run, marker)
                    pending.remove(c)
            if not refs:
                raise MnistlabError("cells wait on each other and cannot start")
            ready, _ = ray.wait(list(refs.values()), num_returns=1)
            key = next(k for k, r in refs.items() if r == ready[0])
            try:
                results[key] = ray.get(refs.pop(key))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                if isinstance(cause, MnistlabError):
                    raise cause from None
                raise MnistlabError(f"cell {key} failed on a Ray worker: {cause}") from None
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                raise MnistlabError(
                    f"cell {key}: its Ray worker died ({type(exc).__name__}); re-run the same "
                    "command to finish it (finished cells are not recomputed)"
                ) from None
        return results


def make(name: str = "local", address: str | None = None) -> LocalExecutor | RayExecutor:
    if name == "local":
        if address is not None:
            raise MnistlabError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise MnistlabError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
