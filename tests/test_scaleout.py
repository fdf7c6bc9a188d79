"""Beyond one machine: Ray executors (local and a two-node loopback cluster), a killed worker,
tuning shared through PostgreSQL, runs logged to MLflow."""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mnistlab import executors, runs
from mnistlab.errors import MnistlabError
from mnistlab.studies import digits
from mnistlab.studies.opening import Env
from mnistlab.studies.stn import tutorial as stn

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mnistlab[ray]')")

STN = dict(epochs=1, seeds=2, limit_train=256, limit_test=128, train_eval_size=64, device="cpu")
DIGITS = dict(
    limit=3000,
    trials=2,
    folds=2,
    tune_max_epochs=2,
    transfer_seeds=2,
    transfer_max_epochs=8,
    transfer_patience=3,
    per_digit=20,
    val_per_digit=20,
    device="cpu",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"MNISTLAB_CACHE": os.environ["MNISTLAB_CACHE"]}},
    )
    yield executors.RayExecutor()
    ray.shutdown()


def _numbers(m: dict) -> dict:
    """A study's metrics without wall-clock fields."""
    if isinstance(m, dict):
        return {k: _numbers(v) for k, v in m.items() if "seconds" not in k}
    if isinstance(m, list):
        return [_numbers(v) for v in m]
    return m


def test_without_ray_the_option_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MnistlabError, match=r"mnistlab\[ray\]"):
        executors.make("ray")


def test_ray_gives_the_same_results_as_local(tmp_path, mnist, local_ray):
    cfg = stn.STNConfig(**STN)
    here = stn.run(cfg, tmp_path / "local")
    there = stn.run(cfg, tmp_path / "ray", Env(executor=local_ray))
    assert _numbers(here) == _numbers(there)
    cfgd = digits.DigitsConfig(**DIGITS)
    parts = ("transfer", "cache")
    here = digits.run(cfgd, tmp_path / "dl", parts=parts)
    there = digits.run(cfgd, tmp_path / "dr", Env(executor=local_ray), parts=parts)
    for unit in ("tune", "frozen5", "cached5", "scratch"):
        assert _numbers(here[unit]) == _numbers(there[unit])
    where = runs.read_json(tmp_path / "ray" / "cells" / "stn.json")["where"]
    assert where["ray_node"] is not None and where["pid"] != os.getpid()


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and a worker node on loopback, one CPU each, stopped afterwards."""
    cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    subprocess.run(
        [
            cli,
            "start",
            "--head",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard=false",
            *common,
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    try:
        subprocess.run(
            [
                cli,
                "start",
                "--address",
                f"127.0.0.1:{port}",
                "--node-ip-address",
                "127.0.0.1",
                *common,
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([cli, "stop", "--force"], capture_output=True, env=env)


def test_a_two_node_cluster_runs_cells_on_both_nodes(tmp_path, mnist, two_node_cluster):
    ex = executors.RayExecutor(two_node_cluster)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    stn.run(stn.STNConfig(**STN), tmp_path, Env(executor=ex))
    used = {
        runs.read_json(tmp_path / "cells" / f"{m}.json")["where"]["ray_node"] for m in stn.MODELS
    }
    assert used == nodes  # one model's stack on each node


def _cell(path: Path, pid_file: Path | None = None, wait_for: Path | None = None):
    """A cell that writes ``path``; with ``wait_for``, only once that file exists (which, in
    the kill test, it never does: the cell is killed while it waits)."""

    def run():
        if pid_file is not None:
            pid_file.write_text(str(os.getpid()))
        while wait_for is not None and not wait_for.exists():
            time.sleep(0.05)
        path.write_text(f"{time.time_ns()}")
        return path.name

    return executors.Cell(path.name, run, done=path.is_file)


def test_a_killed_worker_is_finished_by_a_rerun_without_recomputing(tmp_path, local_ray):
    a, b, pid = tmp_path / "a", tmp_path / "b", tmp_path / "pid"
    cells = [_cell(a), _cell(b, pid, wait_for=tmp_path / "never")]

    def kill_b():
        while not (pid.is_file() and a.is_file()):  # poll: b is running and a is done
            time.sleep(0.05)
        os.kill(int(pid.read_text()), signal.SIGKILL)

    import threading

    killer = threading.Thread(target=kill_b)
    killer.start()
    with pytest.raises(MnistlabError, match="re-run"):
        local_ray.run(cells, root=tmp_path)
    killer.join()
    stamp = a.read_text()
    local_ray.run([_cell(a), _cell(b)], root=tmp_path)
    assert a.read_text() == stamp and b.is_file()  # a not recomputed, b finished


# ------------------------------------------------------------------------------ PostgreSQL


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres():
    """A PostgreSQL server on a loopback port in a temporary data directory."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (mnistlab[postgres])")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    # Outside pytest's tmp tree: its parents are private to root, and the server, which
    # refuses to run as root, runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="mnistlab-pg-"))
    os.chmod(base, 0o755)
    data = base / "pgdata"
    data.mkdir()
    as_pg = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mnistlab"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "log"),
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://mnistlab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_two_processes_share_one_tuning_budget(tmp_path, mnist, postgres):
    import optuna

    argv = [
        "run",
        "digits",
        "--part",
        "tune",
        "--limit",
        "3000",
        "--trials",
        "6",
        "--folds",
        "2",
        "--per-digit",
        "20",
        "--device",
        "cpu",
        "--storage",
        postgres,
        "--quiet",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mnistlab", *argv, "--results", str(tmp_path / f"w{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="digits-cv", storage=postgres)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6  # the budget, neither lost nor exceeded
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == 6  # no trial duplicated
    best = max((t for t in finished if t.state.name == "COMPLETE"), key=lambda t: t.value)
    for i in range(2):
        folder = next((tmp_path / f"w{i}" / "digits").iterdir())
        result = runs.read_json(folder / "tune" / "result.json")
        assert result["best"] == {k: best.params[k] for k in ("lr", "l2", "batch_size")}


# ------------------------------------------------------------------------------ MLflow


def test_a_tracked_run_logs_params_and_the_history(tmp_path, mnist, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is not installed (mnistlab[mlflow])")
    from mlflow import MlflowClient

    from mnistlab.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    argv = [
        "run",
        "stn",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "--limit-train",
        "256",
        "--limit-test",
        "128",
        "--train-eval-size",
        "64",
        "--device",
        "cpu",
        "--results",
        str(tmp_path / "r"),
        "--quiet",
        "--track",
        "mlflow",
    ]
    assert main(argv) == 0
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])[0]
    assert run.data.params["epochs"] == "2" and run.data.params["optimizer"] == "sgd"
    folder = next((tmp_path / "r" / "stn").iterdir())
    with (folder / "history_stn.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    logged = client.get_metric_history(run.info.run_id, "history_stn/model_stn/seed_0/test_acc")
    assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
        (int(r["epoch"]), float(r["test_acc"])) for r in rows
    ]
