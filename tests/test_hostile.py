"""Every promise under hostile input, by class: each value class is tried on every option of
every study (generated from the config dataclasses), plus paths, full disks, concurrency and
Ctrl-C. A refused input is one line on stderr, exit 2, no traceback, and no run folder."""

import dataclasses
import errno
import typing

import pytest

from mnistlab import cli, runs, suite
from mnistlab.cli import main


def _flags(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("cli", f"--{f.name.replace('_', '-')}")
        if not flag:
            continue
        flag = f"--{f.name.replace('_', '-')}" if flag == "hidden" else flag
        yield flag, hints[f.name]


NUMERIC = [
    (study, flag)
    for study, spec in suite.STUDIES.items()
    for flag, kind in _flags(spec.config)
    if kind in (int, float, int | None, tuple[int, ...], tuple[float, ...])
]
BAD_NUMBERS = ["nan", "inf", "-inf", "-5", "1e999", "99999999999999999999999", "seven", ""]


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Any study that would start turns into a failure: refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a bad value reached the study")

    for name, spec in suite.STUDIES.items():
        monkeypatch.setitem(suite.STUDIES, name, dataclasses.replace(spec, run=refuse))
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
    from mnistlab.studies.stn import STNConfig

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

    spec = suite.STUDIES["stn"]
    monkeypatch.setitem(suite.STUDIES, "stn", dataclasses.replace(spec, run=interrupted))
    code, err = _run(["run", "stn", "--results", str(tmp_path), "--quiet"], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_debug_shows_the_traceback(capsys, no_work):
    with pytest.raises(Exception, match="lr"):
        cli.main(["--debug", "run", "stn", "--lr", "nan"])
