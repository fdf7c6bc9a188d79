"""Every promise under hostile input, by class: each value class is tried on every option of
every study (generated from the config dataclasses), plus paths, full disks, concurrency and
Ctrl-C. A refused input is one line on stderr, exit 2, no traceback, and no run folder."""

import dataclasses
import errno
import os
import re
import signal
import subprocess
import sys
import time
import typing

import pytest

from mnistlab import cli, registry, runs
from mnistlab.cli import main
from mnistlab.config import flag


def _flags(cls):
    """Every option of a study's config a user can type, with its field and type."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") != "":
            yield flag(f), hints[f.name]


def _ranged(cls):
    """Options with a declared range, and a value just outside it."""
    for f in dataclasses.fields(cls):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if f.metadata.get("cli") == "" or (lo is None and hi is None):
            continue
        yield flag(f), str(lo - 1) if lo is not None else str(hi * 2)


NUMERIC = [
    (study, flag)
    for study, spec in registry.STUDIES.items()
    for flag, kind in _flags(spec.config)
    if kind in (int, float, int | None, tuple[int, ...], tuple[float, ...])
]
BAD_NUMBERS = ["nan", "inf", "-inf", "-5", "1e999", "99999999999999999999999", "seven", ""]


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Any study that would start turns into a failure: refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a bad value reached the study")

    for spec in registry.STUDIES.values():
        monkeypatch.setattr(spec.run_path.replace(":", "."), refuse)
    monkeypatch.setenv("MNISTLAB_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


# One STN epoch on 128 images: the smallest run that writes every kind of result file.
TINY_STN = [
    "run",
    "stn",
    "--epochs",
    "1",
    "--seeds",
    "1",
    "--limit-train",
    "128",
    "--limit-test",
    "64",
    "--train-eval-size",
    "32",
    "--jobs",  # in this process: the tests patch it (a study's workers would not see that)
    "1",
]


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _refused(code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    return code == 2 and len(lines) == 1 and "Traceback" not in err and "error:" in lines[0]


RANGED = [
    (study, option, value)
    for study, spec in registry.STUDIES.items()
    for option, value in _ranged(spec.config)
]


@pytest.mark.parametrize(("study", "option", "value"), RANGED)
def test_an_out_of_range_value_names_the_option_the_user_typed(
    study, option, value, no_work, capsys
):
    """The range is declared once, on the option; the message names that study's real flag
    (``run digits --epochs 0`` says --epochs, not the field behind it) and no other."""
    code, err = _run(["run", study, option, value], capsys)
    assert _refused(code, err), err
    named = set(re.findall(r"--[a-z][a-z0-9-]*", err))
    assert option in named, err
    assert named <= {f for f, _ in _flags(registry.get(study).config)}, err


@pytest.mark.parametrize(("study", "flag"), NUMERIC)
def test_every_numeric_option_refuses_every_bad_number(study, flag, no_work, capsys):
    for value in BAD_NUMBERS:
        code, err = _run(["run", study, flag, value], capsys)
        assert _refused(code, err), f"{study} {flag} {value!r}: exit {code}: {err}"
    assert not no_work.exists() or not any((no_work / study).glob("*"))


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "stn", "--device", "bogus"],
        ["run", "stn", "--device", "cuda:x"],
        ["run", "stn", "--optimizer", "rmsprop"],
        ["run", "fewshot", "--precision", "fp8"],
        ["run", "fewshot", "--backbone", "alexnet"],
        ["run", "fewshot", "--sizes", "3,3"],
        ["run", "fewshot", "--sizes", "10,,30"],
        ["run", "fewshot", "--weights", "nope.pt"],
        ["run", "digits", "--source", "0-4", "--target", "4-8"],
        ["run", "digits", "--source", "0-4", "--target", "5-7"],
        ["run", "digits", "--source", "0-0", "--target", "1-1"],
        ["run", "digits", "--target", "x-y"],
        ["run", "all", "--profile", "medium"],
        ["run", "all", "--jobs", "0"],
        ["run", "all", "--jobs", "-2"],
        ["run", "all", "--jobs", "1e9"],
        ["run", "all", "--jobs", "two"],
        ["run", "all", "--jobs", "65"],
        ["run", "all", "--jobs", "2", "--executor", "ray"],
        ["data", "show", "-o", "grid.bmp"],
        ["data", "show", "-n", "0"],
        ["data", "show", "--sigma", "nan"],
        ["data", "show", "--zoom", "inf"],
        ["weights", "import", "resnet50", "--tarball", "missing.tgz"],
        ["frobnicate"],
    ],
)
def test_unknown_names_and_impossible_values_are_one_line(argv, no_work, capsys, tmp_path):
    code, err = _run(argv, capsys)
    assert _refused(code, err), f"{argv}: exit {code}: {err}"


def test_cuda_without_a_gpu_is_refused(no_work, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    code, err = _run(["run", "stn", "--device", "cuda"], capsys)
    assert _refused(code, err) and "no CUDA GPU" in err


def test_results_or_cache_that_are_files_or_unwritable(no_work, capsys, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("a file\n")
    for argv in (
        ["run", "stn", "--results", str(afile)],
        ["run", "stn", "--results", str(afile / "below")],
        ["run", "stn", "--results", "/proc/mnistlab-results"],
    ):
        code, err = _run(argv, capsys)
        assert _refused(code, err), f"{argv}: {err}"
    monkeypatch.setenv("MNISTLAB_CACHE", str(afile))
    code, err = _run(["run", "stn", "--results", str(tmp_path / "r")], capsys)
    assert _refused(code, err) and "MNISTLAB_CACHE" in err


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake.tgz"
    fake.write_bytes(b"\x1f\x8b not really gzip")
    code, err = _run(["weights", "import", "resnet50", "--tarball", str(fake)], capsys)
    assert _refused(code, err) and "SHA-256 mismatch" in err


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    from mnistlab import io as mio

    real = mio.os.fsync
    calls = {"n": 0}

    def full(fd):
        calls["n"] += 1
        if calls["n"] > 1:  # the config is written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(mio.os, "fsync", full)
    root = tmp_path / "r"
    argv = [
        *TINY_STN,
        "--results",
        str(root),
        "--quiet",
    ]
    code, err = _run(argv, capsys)
    assert _refused(code, err) and "disk full" in err
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("metrics.json"))


def test_a_second_writer_is_told_who_holds_the_folder(tmp_path, capsys, mnist):
    from mnistlab.studies.stn.common import STNConfig

    cfg = STNConfig(
        epochs=1, seeds=1, limit_train=128, limit_test=64, train_eval_size=32, device="cpu"
    )
    folder = runs.run_dir(tmp_path, "stn", cfg)
    argv = [
        *TINY_STN,
        "--device",
        "cpu",
        "--results",
        str(tmp_path),
        "--quiet",
    ]
    with runs.Run(folder, cfg):  # another process is computing this configuration
        code, err = _run(argv, capsys)
    assert _refused(code, err) and "already being computed by PID" in err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("mnistlab.studies.stn.tutorial.run", interrupted)
    code, err = _run(["run", "stn", "--jobs", "1", "--results", str(tmp_path), "--quiet"], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_sigterm_saves_what_is_finished_says_so_and_exits_143(tmp_path, mnist):
    """What Slurm, Ray and Kubernetes send first: one line, exit 143, the last epoch's
    checkpoint kept, and the same command resumes from it to a finished run."""
    results = tmp_path / "results"
    argv = [*TINY_STN[:3], "6", *TINY_STN[4:], "--results", str(results), "--device", "cpu"]
    command = [sys.executable, "-m", "mnistlab", *argv]
    env = {**os.environ, "MNISTLAB_PROGRESS": "lines"}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    while not list(results.glob("stn/*/checkpoints/*.pt")):  # poll until an epoch is saved
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        time.sleep(0.02)  # (a hang is caught by the per-test timeout)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.startswith("mnistlab:")]
    assert lines == ["mnistlab: terminated (SIGTERM); finished work is saved, re-run to resume"]
    assert "Traceback" not in err
    folder = next(results.glob("stn/*"))
    assert not runs.is_complete(folder) and list(folder.glob("checkpoints/*.pt"))
    assert main(argv) == 0  # the same command, here in-process, resumes to a finished run
    assert runs.is_complete(folder)


def test_debug_shows_the_traceback(capsys, no_work):
    with pytest.raises(Exception, match="lr"):
        cli.main(["--debug", "run", "stn", "--lr", "nan"])
