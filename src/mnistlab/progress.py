"""Progress reporting passed down from the caller: studies never know where they run.

Studies call ``progress.task(description, total)`` and ``advance()`` on what it returns, and
``progress.message(text)`` for one-off lines. Three renderings:

* :class:`RichProgress` — live bars with ETA on a terminal;
* :class:`LineProgress` — when output goes to a file, a pipe, CI or nohup: one line per task
  at its start, then at most every ``interval`` seconds (done/total, rate, ETA), and one when
  it ends — so ``make run > log`` always shows that the run is alive;
* :class:`NotebookProgress` — tqdm's notebook bars, chosen by :func:`auto` inside Jupyter.

The base :class:`Progress` is silent except for log records (tests, library calls).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import AbstractContextManager
from typing import Any, TextIO

log = logging.getLogger("mnistlab")


def _fields(fields: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Task:
    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def done(self) -> None:
        pass


class Progress(AbstractContextManager):
    """Silent (messages go to the ``mnistlab`` logger only)."""

    def task(self, description: str, total: int | None) -> Task:
        return Task()

    def message(self, text: str) -> None:
        log.info(text)

    def __exit__(self, *exc: object) -> None:
        return None


class _LineTask(Task):
    def __init__(self, owner: LineProgress, description: str, total: int | None):
        self.owner, self.description, self.total = owner, description, total
        self.count, self.start = 0, time.monotonic()
        self.last = self.start
        self.fields: dict[str, Any] = {}
        owner.emit(f"{description}: started ({total if total is not None else '?'} steps)")

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.count += n
        self.fields.update(fields)
        now = time.monotonic()
        if now - self.last < self.owner.interval:
            return
        self.last = now
        elapsed = now - self.start
        line = f"{self.description}: {self.count}/{self.total}"
        if self.count and self.total:
            rate = self.count / elapsed
            eta = (self.total - self.count) / rate if rate > 0 else float("nan")
            line += f" ({rate:.3g}/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)})"
        if self.fields:
            line += f" {_fields(self.fields)}"
        self.owner.emit(line)

    def done(self) -> None:
        took = time.monotonic() - self.start
        self.owner.emit(f"{self.description}: done ({self.count} steps in {_clock(took)})")


class LineProgress(Progress):
    """Plain lines with ETA, at most one per task every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0):
        self.stream, self.interval = stream, interval

    def emit(self, text: str) -> None:
        log.info(text)
        print(text, file=self.stream or sys.stderr, flush=True)

    def task(self, description: str, total: int | None) -> Task:
        return _LineTask(self, description, total)

    def message(self, text: str) -> None:
        self.emit(text)


class _RichTask(Task):
    def __init__(self, bar, task_id):
        self._bar, self._id = bar, task_id

    def advance(self, n: int = 1, **fields: Any) -> None:
        if fields:
            self._bar.update(self._id, advance=n, info=_fields(fields))
        else:
            self._bar.update(self._id, advance=n)

    def done(self) -> None:
        self._bar.remove_task(self._id)


class RichProgress(Progress):
    """Live bars with ETA; messages printed above them."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _P

        self._bar = _P(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def task(self, description: str, total: int | None) -> Task:
        return _RichTask(self._bar, self._bar.add_task(description, total=total, info=""))

    def message(self, text: str) -> None:
        log.info(text)
        self._bar.console.print(text)


class _TqdmTask(Task):
    def __init__(self, bar):
        self._bar = bar

    def advance(self, n: int = 1, **fields: Any) -> None:
        if fields:
            self._bar.set_postfix(fields, refresh=False)
        self._bar.update(n)

    def done(self) -> None:
        self._bar.close()


class NotebookProgress(Progress):
    """tqdm's notebook bars (``tqdm.auto``: widgets where ipywidgets exist, text otherwise)."""

    def task(self, description: str, total: int | None) -> Task:
        from tqdm.auto import tqdm

        return _TqdmTask(tqdm(total=total, desc=description, leave=True))

    def message(self, text: str) -> None:
        log.info(text)
        print(text, flush=True)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def auto(*, quiet: bool = False, stream: TextIO | None = None) -> Progress:
    """The right rendering for where we run: silent with ``quiet``, notebook bars in Jupyter,
    live bars on a terminal, timed lines otherwise."""
    if quiet:
        return Progress()
    if in_notebook():
        return NotebookProgress()
    target = stream or sys.stderr
    if target.isatty():
        return RichProgress()
    return LineProgress(stream)


def default() -> Progress:
    """What a library call gets when the caller passes no progress: bars in a notebook,
    silence elsewhere (tests, scripts that log on their own)."""
    return NotebookProgress() if in_notebook() else Progress()
