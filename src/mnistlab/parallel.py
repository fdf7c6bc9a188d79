"""``run all --jobs N``: studies side by side, each in a worker process of its own.

Why processes, and why it pays on a small CPU: the studies' operations are small (a batch of 64
through the STN's 5×5 convolutions), so one process cannot keep two cores busy — its STN step
runs 1.5× faster on two threads than on one, not 2× — while two single-threaded processes
barely slow each other (``benchmarks/jobs_bench.py``). N processes with cores/N threads each
therefore finish the suite sooner than one process with all cores.

Rules that keep the numbers trustworthy:

* every study runs in a fresh process (``spawn``: no forked OpenMP or allocator state) with a
  fixed number of threads, so its numbers do not depend on what ran beside it or when;
* a study starts only after the studies it reads (``Job.after``) have finished, and the longest
  ready study starts first (``Job.minutes``), so the suite does not end on a long straggler;
* progress and messages travel back over a queue and are replayed on the caller's
  :class:`~mnistlab.progress.Progress` (bars, lines or notebook), and each study still logs to
  its own ``run.log``;
* the first failure stops the other workers (their checkpoints let a re-run resume) and is
  raised here as it was raised there, so the command line reports it as one line.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnistlab.progress import LineProgress, Progress, Task, log

FLUSH_SECONDS = 0.25  # a worker sends a task's progress at most this often


@dataclass(frozen=True)
class Job:
    """One study to run in a worker: what ``target(job, progress)`` needs, picklable."""

    name: str
    payload: Any  # handed to the target as is
    after: tuple[str, ...] = ()  # jobs that must finish first
    minutes: float = 1.0  # expected length: the longest ready job starts first


def threads_per_job(jobs: int) -> int:
    """Each worker's intra-op threads: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


# ------------------------------------------------------------------ in the worker process


class _LogLines(LineProgress):
    """The worker's own record: timed task lines into the log (``run.log``), nothing printed."""

    def emit(self, text: str) -> None:
        log.info(text)


class _ForwardTask(Task):
    def __init__(self, owner: _Forward, tid: int, local: Task):
        self.owner, self.tid, self.local = owner, tid, local
        self.pending, self.fields, self.last = 0, {}, time.monotonic()

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.local.advance(n, **fields)
        self.pending += n
        self.fields.update(fields)
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        if self.pending or self.fields:
            self.owner.send("advance", self.tid, self.pending, self.fields)
        self.pending, self.fields, self.last = 0, {}, time.monotonic()

    def done(self) -> None:
        self._flush()
        self.local.done()
        self.owner.send("done", self.tid)


class _Forward(Progress):
    """A worker's progress: logged locally and sent to the parent, coalesced per task."""

    def __init__(self, events: Any, job: str):
        self.events, self.job, self.ids = events, job, itertools.count()
        self.local = _LogLines()

    def send(self, kind: str, *args: Any) -> None:
        self.events.put((kind, self.job, *args))

    def task(self, description: str, total: int | None) -> Task:
        tid = next(self.ids)
        self.send("task", tid, description, total)
        return _ForwardTask(self, tid, self.local.task(description, total))

    def message(self, text: str) -> None:
        log.info(text)
        self.send("message", text)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (MnistlabError, OSError), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # any unpicklable exception is reported as text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _worker(target: Callable, job: Job, threads: int, events: Any) -> None:
    import torch

    torch.set_num_threads(threads)  # before any work: the job's numbers depend on it
    try:
        t0 = time.perf_counter()
        result = target(job, _Forward(events, job.name))
        events.put(("result", job.name, result, time.perf_counter() - t0))
    except KeyboardInterrupt:
        pass  # the parent was interrupted too and stops everyone
    except BaseException as exc:  # every failure is reported to the parent
        events.put(("error", job.name, _portable(exc), traceback.format_exc()))


# ------------------------------------------------------------------ in the calling process


class _Replay:
    """Worker events onto the caller's progress."""

    def __init__(self, progress: Progress):
        self.progress, self.tasks = progress, {}

    def __call__(self, kind: str, job: str, *args: Any) -> None:
        if kind == "task":
            tid, description, total = args
            self.tasks[job, tid] = self.progress.task(description, total)
        elif kind == "advance":
            tid, n, fields = args
            self.tasks[job, tid].advance(n, **fields)
        elif kind == "done":
            self.tasks.pop((job, args[0])).done()
        elif kind == "message":
            self.progress.message(args[0])

    def close(self, job: str) -> None:
        """End the bars a stopped worker left open."""
        for key in [k for k in self.tasks if k[0] == job]:
            self.tasks.pop(key).done()


class WorkerFailed(RuntimeError):
    """A worker died without a word (killed, out of memory) or raised an unexpected error."""


def _next_ready(waiting: list[Job], finished: set[str]) -> Job | None:
    ready = [j for j in waiting if all(a in finished for a in j.after)]
    return max(ready, key=lambda j: j.minutes, default=None)


def run_jobs(
    jobs: list[Job],
    target: Callable[[Job, Progress], Any],
    *,
    workers: int,
    progress: Progress,
    on_result: Callable[[Job, Any, float], None],
) -> None:
    """Run ``target(job, progress)`` for every job, ``workers`` at a time, each in a fresh
    process with :func:`threads_per_job` threads; ``on_result(job, result, seconds)`` here as
    each finishes. ``target`` must be a module-level function (the workers import it)."""
    names = {j.name for j in jobs}
    pending = [
        Job(j.name, j.payload, tuple(a for a in j.after if a in names), j.minutes) for j in jobs
    ]
    ctx = multiprocessing.get_context("spawn")
    events, threads = ctx.Queue(), threads_per_job(workers)
    running: dict[str, Any] = {}
    finished: set[str] = set()
    replay = _Replay(progress)
    by_name = {j.name: j for j in pending}
    try:
        while pending or running:
            while len(running) < workers and (job := _next_ready(pending, finished)):
                pending.remove(job)
                proc = ctx.Process(
                    target=_worker, args=(target, job, threads, events), name=f"mnistlab {job.name}"
                )
                proc.start()
                running[job.name] = proc
            event = _next_event(events, running)
            kind, name = event[0], event[1]
            if kind == "result":
                running.pop(name).join()
                finished.add(name)
                replay.close(name)
                on_result(by_name[name], event[2], event[3])
            elif kind == "error":
                running.pop(name).join()
                replay.close(name)
                _raise(name, event[2], event[3])
            else:
                replay(*event)
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.join()


def _next_event(events: Any, running: dict[str, Any]) -> tuple:
    """The next worker event; a worker that exited without sending its end is an error."""
    while True:
        try:
            return events.get(timeout=1.0)
        except queue.Empty:
            pass
        dead = [n for n, p in running.items() if not p.is_alive()]
        if dead:
            try:  # an end sent just before exiting may still be in the pipe
                return events.get(timeout=2.0)
            except queue.Empty:
                code = running.pop(dead[0]).exitcode
                raise WorkerFailed(
                    f"{dead[0]}: its worker process ended without a result (exit code {code}; "
                    "killed, or out of memory?); re-run to resume from its checkpoints"
                ) from None


def _raise(name: str, exc: BaseException, trace: str) -> None:
    from mnistlab.errors import MnistlabError

    if isinstance(exc, MnistlabError | OSError | MemoryError):
        raise exc  # the command line turns these into one line, as in a single process
    raise WorkerFailed(f"{name} failed in its worker process:\n{trace}")
