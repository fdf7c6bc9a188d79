"""How every study opens its results folder.

One place, because the order matters and six studies repeated it by hand: the device is
resolved first (it is part of the config hash, so ``auto`` and ``cpu`` share a folder on a CPU
machine), the MNIST provenance is read before any work (it goes into ``config.json``), digit
counts are checked before a folder exists (a rejected config creates nothing), and the folder
is locked for one writer — whose ``finished`` result is handed back instead of recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import runs
from mnistlab.data import load_mnist, mnist_info
from mnistlab.executors import LocalExecutor
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.train.devices import pick_device


@dataclass(frozen=True)
class Env:
    """What a study run takes from whoever calls it — the command line, ``run all``, a
    notebook, a test — beside its config: nothing here shapes the results, so nothing here is
    part of the config hash. (The device is in the config: CPU and GPU differ in the last bits;
    the command line resolves ``auto`` to the concrete device once, at the edge.)"""

    progress: Progress | None = None  # default: bars on a terminal or in a notebook
    force: bool = False  # recompute finished results
    data_dir: Path | str | None = None  # a folder with the MNIST IDX files
    executor: Any = None  # where independent cells run (default: here, in order)


@dataclass
class StudyRun:
    """A locked run folder and what a study needs to fill it."""

    run: runs.Run
    out: Path
    device: torch.device
    progress: Progress
    executor: Any
    data_dir: Path | str | None

    @property
    def finished(self) -> dict | None:
        return self.run.finished

    def finish(self, metrics: dict) -> dict:
        """Write ``metrics.json`` last: its presence marks the run finished."""
        return self.run.finish(metrics)

    @property
    def cell_progress(self) -> Progress | None:
        """Progress for cells: ours when they run here; none in remote tasks, whose output
        would go to a worker's log rather than to the user."""
        return self.progress if isinstance(self.executor, LocalExecutor) else None


@contextmanager
def open_run(
    config: Any, out_dir: Path | str, env: Env | None = None, *, check_counts: bool = False
) -> Iterator[StudyRun]:
    """Open (and lock) ``out_dir`` for ``config``; ``check_counts`` refuses a digits config
    whose ``limit`` leaves too few images of a digit, before the folder is created."""
    env = env or Env()
    out = Path(out_dir)
    device = pick_device(config.device)
    provenance = mnist_info(env.data_dir).as_dict()
    if check_counts and config.limit is not None:  # the first N images may hold too few
        labels = load_mnist("train", env.data_dir)[1][: config.limit]
        config.check_target_counts(labels.bincount(minlength=10).tolist())
    with runs.Run(out, config, force=env.force, provenance=provenance, device=str(device)) as run_:
        progress = env.progress or default_progress()
        yield StudyRun(run_, out, device, progress, env.executor or LocalExecutor(), env.data_dir)
