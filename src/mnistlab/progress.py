"""Progress reporting passed down from the CLI: Rich bars when interactive, silence in tests.

Studies call ``progress.task(description, total)`` and ``advance()`` on what it returns; they
never know whether a terminal is attached.
"""

from __future__ import annotations

import logging
import sys
from contextlib import AbstractContextManager
from typing import Any

log = logging.getLogger("mnistlab")


class Task:
    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def done(self) -> None:
        pass


class Progress(AbstractContextManager):
    """No bars (the default for library calls, tests and non-interactive runs); messages go to
    the log and, with ``echo``, to stderr — one line per finished step."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo

    def task(self, description: str, total: int | None) -> Task:
        return Task()

    def message(self, text: str) -> None:
        log.info(text)
        if self.echo:
            print(text, file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        return None


class _RichTask(Task):
    def __init__(self, bar, task_id):
        self._bar, self._id = bar, task_id

    def advance(self, n: int = 1, **fields: Any) -> None:
        info = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )
        self._bar.update(self._id, advance=n, info=info)

    def done(self) -> None:
        self._bar.remove_task(self._id)


class RichProgress(Progress):
    """Live bars with ETA; finished-study summaries printed above them."""

    def __init__(self) -> None:
        super().__init__()
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
