"""``run all --jobs N``: studies side by side, each in a worker process of its own.

Why processes, and why it pays on a small CPU: the studies' operations are small (a batch of 64
through the STN's 5×5 convolutions), so one process cannot keep two cores busy — its STN step
runs well short of twice as fast on two threads — while two single-threaded processes barely
slow each other (``benchmarks/jobs_bench.py``; README, Timings). N processes with cores/N
threads each
therefore finish the suite sooner than one process with all cores.

Rules that keep the numbers trustworthy:

* every study runs in a fresh process (``spawn``: no forked OpenMP or allocator state) with a
  fixed number of threads, so its numbers do not depend on what ran beside it or when;
* a study starts only after the studies whose caches it reads (``Job.after``), and the longest
  ready job starts first (``Job.minutes``), so the suite does not end on a long straggler;
* a study with independent cells (the STN studies: one stack per model) hands all but its
  heaviest to the queue as jobs of their own (:class:`DelegatingExecutor`) and waits for them
  without counting as busy — otherwise its STN stack and its CNN stack would run one after the other
  on one core, the longest pole of the suite;
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mnistlab.executors import Cell, LocalExecutor
from mnistlab.executors import order as order_cells
from mnistlab.progress import LineProgress, Progress, Task, log
from mnistlab.train.allocator import keep_freed_memory

FLUSH_SECONDS = 0.25  # a worker sends a task's progress at most this often
DEAD_GRACE_SECONDS = 5.0  # how long a worker's end may trail its exit in the queue


@dataclass(frozen=True)
class Job:
    """One study to run in a worker: what ``target(job, here)`` needs, picklable."""

    name: str
    payload: Any  # handed to the target as is
    after: tuple[str, ...] = ()  # jobs that must finish first
    minutes: float = 1.0  # expected length: the longest ready job starts first
    cell: str | None = None  # set: run only this cell of the study (delegated by its worker)


@dataclass
class JobContext:
    """What a job gets from its worker: progress that reaches the caller, and an executor that
    may hand the study's independent cells to other workers."""

    progress: Progress
    executor: LocalExecutor


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


class DelegatingExecutor(LocalExecutor):
    """Runs a study's cells in its worker, but asks the caller to run all but the heaviest of
    the cells that are ready together in other workers, then waits for their results — wave
    by wave, so that cells that need others (a search, then the seeds of its choice) are
    shared out once what they need is done. Why: a study of two stacks (the STN and its CNN)
    would otherwise keep one core busy for both while the other core's queue runs dry;
    waiting, it tells the caller so that its core counts as free."""

    def __init__(self, forward: _Forward):
        self.forward, self.parent = forward, os.getppid()

    def run(self, cells: Sequence[Cell], root: Any = None) -> dict[str, Any]:
        todo = [c for c in order_cells(cells) if not c.done()]
        finished = {c.key for c in cells if c.key not in {t.key for t in todo}}
        total = sum(c.weight for c in todo) or 1.0
        results: dict[str, Any] = {}
        while todo:
            ready = [c for c in todo if all(n in finished for n in c.needs)]
            here, *away = sorted(ready, key=lambda c: -c.weight)
            for c in away:
                self.forward.send("delegate", c.key, c.weight / total)
            results[here.key] = here.run()
            if away:
                self._wait(away)
            finished |= {c.key for c in ready}
            todo = [c for c in todo if c not in ready]
        return results

    def _wait(self, away: list[Cell]) -> None:
        self.forward.send("waiting")
        while not all(c.done() for c in away):
            if os.getppid() != self.parent:  # the caller is gone: nobody will run them
                raise SystemExit(1)
            time.sleep(0.5)
        self.forward.send("resumed")


def _worker(target: Callable, job: Job, threads: int, events: Any) -> None:
    import torch

    torch.set_num_threads(threads)  # before any work: the job's numbers depend on it
    keep_freed_memory()  # a process the tool owns (train/allocator.py)
    try:
        t0 = time.perf_counter()
        forward = _Forward(events, job.name)
        result = target(job, JobContext(forward, DelegatingExecutor(forward)))
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


class _Scheduler:
    """The caller's side: which job starts next, where events go, who counts as busy."""

    def __init__(self, jobs: list[Job], target: Callable, workers: int, progress: Progress):
        names = {j.name for j in jobs}
        self.pending = [replace(j, after=tuple(a for a in j.after if a in names)) for j in jobs]
        self.jobs = {j.name: j for j in self.pending}
        self.target, self.workers = target, workers
        self.ctx = multiprocessing.get_context("spawn")
        self.events, self.threads = self.ctx.Queue(), threads_per_job(workers)
        self.running: dict[str, Any] = {}
        self.waiting: set[str] = set()  # workers idle until their delegated cells are done
        self.finished: set[str] = set()
        self.dead_since: dict[str, float] = {}
        self.replay = _Replay(progress)

    def start_ready(self) -> None:
        """Start ready jobs while a core is free: first the cells a waiting study needs (it
        holds its memory until they are done), then the longest."""
        while len(self.running) - len(self.waiting) < self.workers:
            ready = [j for j in self.pending if all(a in self.finished for a in j.after)]
            if not ready:
                return
            job = max(ready, key=lambda j: (j.name.split("#")[0] in self.waiting, j.minutes))
            self.pending.remove(job)
            proc = self.ctx.Process(
                target=_worker,
                args=(self.target, job, self.threads, self.events),
                name=f"mnistlab {job.name}",
            )
            proc.start()
            self.running[job.name] = proc

    def handle(self, event: tuple, on_result: Callable[[Job, Any, float], None]) -> None:
        kind, name, *args = event
        if kind in ("result", "error"):
            self.running.pop(name).join()
            self.waiting.discard(name)
            self.replay.close(name)
            if kind == "error":
                _raise(name, *args)
            self.finished.add(name)
            if self.jobs[name].cell is None:
                on_result(self.jobs[name], *args)
        elif kind == "delegate":
            key, share = args
            parent = self.jobs[name]
            job = replace(parent, name=f"{name}#{key}", after=(), cell=key)
            self.jobs[job.name] = replace(job, minutes=parent.minutes * share)
            self.pending.append(self.jobs[job.name])
        elif kind == "waiting":
            self.waiting.add(name)
        elif kind == "resumed":
            self.waiting.discard(name)
        else:
            self.replay(*event)

    def next_event(self) -> tuple | None:
        try:
            return self.events.get(timeout=1.0)
        except queue.Empty:
            return None

    def check_dead(self) -> None:
        """A worker that exited without its end (result or error) is an error, not a hang —
        checked on every event, since the other worker's progress keeps the queue busy; its
        end may still be in the pipe behind other events, hence the grace period."""
        now = time.monotonic()
        for name, proc in list(self.running.items()):
            if proc.is_alive():
                continue
            if now - self.dead_since.setdefault(name, now) > DEAD_GRACE_SECONDS:
                code = self.running.pop(name).exitcode
                raise WorkerFailed(
                    f"{name}: its worker process ended without a result (exit code {code}; "
                    "killed, or out of memory?); re-run to resume from its checkpoints"
                )

    def stop(self) -> None:
        for proc in self.running.values():
            proc.terminate()
        for proc in self.running.values():
            proc.join()


def run_jobs(
    jobs: list[Job],
    target: Callable[[Job, JobContext], Any],
    *,
    workers: int,
    progress: Progress,
    on_result: Callable[[Job, Any, float], None],
) -> None:
    """Run ``target(job, here)`` for every job, ``workers`` at a time, each in a fresh process
    with :func:`threads_per_job` threads; ``on_result(job, result, seconds)`` here as each
    study finishes. ``target`` must be a module-level function (the workers import it)."""
    s = _Scheduler(jobs, target, workers, progress)
    try:
        while True:
            s.start_ready()
            if not s.running:
                if s.pending:  # only possible if jobs wait on each other
                    raise ValueError(f"jobs wait on each other: {[j.name for j in s.pending]}")
                return
            event = s.next_event()
            if event is not None:
                s.handle(event, on_result)
            s.check_dead()
    finally:
        s.stop()


def _raise(name: str, exc: BaseException, trace: str) -> None:
    from mnistlab.errors import MnistlabError

    if isinstance(exc, MnistlabError | OSError | MemoryError):
        raise exc  # the command line turns these into one line, as in a single process
    raise WorkerFailed(f"{name} failed in its worker process:\n{trace}")
