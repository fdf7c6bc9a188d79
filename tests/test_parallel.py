"""``run all --jobs``: studies in worker processes — same numbers, order, progress, failures."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from mnistlab import parallel, registry, runs, suite
from mnistlab.errors import MnistlabError
from mnistlab.executors import Cell
from mnistlab.progress import Progress, Task


class Recorder(Progress):
    """Remembers what reached the caller's progress."""

    def __init__(self) -> None:
        self.tasks: list[str] = []
        self.steps: dict[str, int] = {}
        self.messages: list[str] = []

    def task(self, description: str, total: int | None) -> Task:
        self.tasks.append(description)
        owner = self

        class _T(Task):
            def advance(self, n: int = 1, **fields) -> None:
                owner.steps[description] = owner.steps.get(description, 0) + n

        return _T()

    def message(self, text: str) -> None:
        self.messages.append(text)


def _tiny_run_all(root: Path, progress: Progress) -> dict:
    return suite.run_all(
        profile="tiny",
        settings=suite.Settings(root),
        seed=0,
        device="cpu",
        protocol="specified",
        progress=progress,
        jobs=2,
    )


def test_studies_in_workers_give_the_numbers_of_one_process_with_their_threads(tmp_path, mnist):
    """Two workers run the as-specified studies; progress and summaries come back here; a
    study's metrics equal those of the same study run in this process with the workers'
    thread count (the numbers do not depend on running beside another study)."""
    recorder = Recorder()
    root = tmp_path / "jobs"
    manifest = _tiny_run_all(root, recorder)
    studies = registry.profile_configs("tiny", 0, "cpu", "specified")
    assert manifest["jobs"] == 2 and set(manifest["wall_seconds"]) == set(studies)
    assert all(runs.is_complete(root / f) for f in manifest["folders"].values())
    assert {t.split(":")[0] for t in recorder.tasks} >= {"stn", "digits"}
    assert sum(recorder.steps.values()) > 0
    assert sum(m.startswith("stn: ") and "→" not in m for m in recorder.messages) >= 1

    config = studies["stn"]
    here = tmp_path / "here"
    threads = torch.get_num_threads()
    torch.set_num_threads(parallel.threads_per_job(2))
    try:
        _, alone = suite.execute_study("stn", config, suite.Env(Progress()), root=here)
    finally:
        torch.set_num_threads(threads)
    cells = root / manifest["folders"]["stn"] / "cells"
    pids = {runs.read_json(cells / f"{m}.json")["where"]["pid"] for m in ("stn", "baseline")}
    assert len(pids) == 2  # the CNN's stack ran in a worker of its own, beside the STN's
    worker = runs.read_json(root / manifest["folders"]["stn"] / "metrics.json")
    for model in ("stn", "baseline"):
        for key in ("curves_by_seed", "per_seed_primary", "test_correct_by_seed"):
            assert worker["models"][model][key] == alone["models"][model][key], (model, key)
    for key in ("deformations_by_seed", "theta_by_seed", "ablation"):
        assert worker[key] == alone[key], key

    again = Recorder()  # everything finished: loaded here, nothing started
    _tiny_run_all(root, again)
    summaries = [m for m in again.messages if "results in" not in m]
    assert not again.tasks and len(summaries) == len(studies)
    assert all("already finished" in m for m in summaries)


# Targets run in the workers: module level, so a spawned process can import them.
def _record_order(job: parallel.Job, here: parallel.JobContext) -> str:
    with open(job.payload, "a") as f:
        f.write(job.name + "\n")
    return job.name


def _fail(job: parallel.Job, here: parallel.JobContext) -> None:
    raise MnistlabError(f"{job.name}: refused on purpose")


def _wait_forever(job: parallel.Job, here: parallel.JobContext) -> None:
    """Busy until stopped: it never returns on its own (a worker the caller must stop)."""
    while True:
        time.sleep(0.05)


def _die(job: parallel.Job, here: parallel.JobContext) -> None:
    os._exit(3)


def _run(jobs: list[parallel.Job], target, workers: int = 2) -> list[str]:
    done: list[str] = []
    parallel.run_jobs(
        jobs, target, workers=workers, progress=Progress(), on_result=lambda j, r, s: done.append(r)
    )
    return done


def test_the_longest_ready_job_starts_first_and_dependencies_wait(tmp_path):
    log = str(tmp_path / "order.txt")
    jobs = [
        parallel.Job("short", log, minutes=1),
        parallel.Job("best", log, after=("long",), minutes=50),
        parallel.Job("long", log, minutes=30),
        parallel.Job("mid", log, after=("not-in-this-run",), minutes=10),
    ]
    done = _run(jobs, _record_order, workers=1)
    assert done == ["long", "best", "mid", "short"]
    assert Path(log).read_text().split() == done


def test_a_failure_in_a_worker_is_raised_here_and_stops_the_others(tmp_path):
    """The other worker never ends on its own: only being stopped ends this test (a hang
    would be caught by the per-test timeout)."""
    with pytest.raises(MnistlabError, match="bad: refused on purpose"):
        _run([parallel.Job("slow", None, minutes=2), parallel.Job("bad", None)], _fail_or_wait)
    assert not multiprocessing.active_children()


def _fail_or_wait(job: parallel.Job, here: parallel.JobContext) -> None:
    (_fail if job.name == "bad" else _wait_forever)(job, here)


def _chatty_or_die(job: parallel.Job, here: parallel.JobContext) -> None:
    """``chatty`` sends progress every few ms until stopped (keeping the caller's queue busy);
    ``crash`` dies once chatty is chatting (the file ``job.payload`` is its sign)."""
    started = Path(job.payload)
    if job.name == "crash":
        while not started.exists():
            time.sleep(0.01)
        _die(job, here)
    task = here.progress.task("chatty", None)
    started.touch()
    while True:
        time.sleep(0.005)
        task.advance()


def test_a_worker_that_dies_without_a_word_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(parallel.WorkerFailed, match="exit code 3"):
        _run([parallel.Job("crash", None)], _die)
    sign = str(tmp_path / "chatting")  # also while another worker keeps sending progress
    with pytest.raises(parallel.WorkerFailed, match=r"crash: .*exit code 3"):
        _run([parallel.Job("chatty", sign), parallel.Job("crash", sign)], _chatty_or_die)
    assert not multiprocessing.active_children()


def test_jobs_auto_and_what_it_refuses(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert suite.resolve_jobs("auto", "cpu") == 2
    assert suite.resolve_jobs("auto", "cpu", "ray") == 1
    assert suite.resolve_jobs(3, "cpu") == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert suite.resolve_jobs("auto", "cpu") == 1
    with pytest.raises(MnistlabError, match="--executor ray"):
        suite.resolve_jobs(2, "cpu", "ray")


def _two_cells(folder: Path, fail: bool) -> list[Cell]:
    def make(key: str) -> Cell:
        path = folder / f"{key}.txt"

        def run() -> None:
            if fail and key == "light":
                raise MnistlabError("light: refused on purpose")
            path.write_text(str(os.getpid()))

        return Cell(key, run, done=path.is_file, weight=2.0 if key == "heavy" else 1.0)

    return [make("heavy"), make("light")]


def _study_with_cells(job: parallel.Job, here: parallel.JobContext) -> None:
    folder, fail = job.payload
    cells = _two_cells(folder, fail)
    if job.cell is None:
        here.executor.run(cells)
    else:
        next(c for c in cells if c.key == job.cell).run()


def test_a_study_hands_its_lighter_cell_to_another_worker_and_waits(tmp_path):
    done = _run([parallel.Job("study", (tmp_path, False))], _study_with_cells)
    assert done == [None]  # only the study is reported; its delegated cell is not
    heavy, light = ((tmp_path / f"{k}.txt").read_text() for k in ("heavy", "light"))
    assert heavy != light  # two processes


def test_a_delegated_cell_that_fails_stops_the_study_waiting_for_it(tmp_path):
    with pytest.raises(MnistlabError, match="light: refused on purpose"):
        _run([parallel.Job("study", (tmp_path, True))], _study_with_cells)
    assert not multiprocessing.active_children()


def test_a_study_run_alone_uses_both_cores_with_the_numbers_of_run_all(tmp_path, mnist):
    """``mnistlab run stn-deform`` alone: its CNN stack runs in a second worker beside the
    STN's (each single-threaded, as in ``make run``), so run alone and run inside ``run all``
    give the same numbers."""
    from mnistlab.cli import main

    cfg = registry.profile_configs("tiny", 0, "cpu", "specified")["stn-deform"]
    argv = ["run", "stn-deform", "--jobs", "2", "--device", "cpu", "--quiet"]
    for field in ("epochs", "seeds", "limit_train", "limit_test", "train_eval_size"):
        argv += [f"--{field.replace('_', '-')}", str(getattr(cfg, field))]
    assert main([*argv, "--results", str(tmp_path / "alone")]) == 0
    folder = runs.run_dir(tmp_path / "alone", "stn-deform", cfg)
    pids = {
        runs.read_json(folder / "cells" / f"{m}.json")["where"]["pid"] for m in ("stn", "baseline")
    }
    assert len(pids) == 2 and os.getpid() not in pids
    in_suite = tmp_path / "suite"
    parallel.run_jobs(
        [suite._job("stn-deform", cfg, suite.Settings(in_suite), "tiny")],
        suite._run_job,
        workers=2,
        progress=Progress(),
        on_result=lambda *a: None,
    )
    ours = runs.read_json(folder / "metrics.json")
    theirs = runs.read_json(runs.run_dir(in_suite, "stn-deform", cfg) / "metrics.json")
    for key in ("per_seed_primary", "per_seed_final", "curves_by_seed"):
        assert ours["models"]["stn"][key] == theirs["models"]["stn"][key], key
    assert ours["ablation"] == theirs["ablation"]


def test_cells_that_need_others_are_shared_out_wave_by_wave(tmp_path, mnist, tmp_cache):
    """stn-best: its search first (one worker), then its two stacks of seeds side by side in
    two workers — a cell that needs another is delegated once that one is done."""
    cfg = registry.profile_configs("tiny", 0, "cpu", "best", ("stn-best",))["stn-best"]
    settings = suite.Settings(tmp_path)
    job = suite._job("stn-best", cfg, settings, "tiny")
    parallel.run_jobs(
        [job], suite._run_job, workers=2, progress=Progress(), on_result=lambda *a: None
    )
    folder = runs.run_dir(tmp_path, "stn-best", cfg)
    assert runs.is_complete(folder) and (folder / "search.json").is_file()
    pids = {runs.read_json(folder / "cells" / f"stn-{i}.json")["where"]["pid"] for i in (0, 1)}
    assert len(pids) == 2  # the second stack ran in the other worker
