"""One sweep three ways: the local executor, Ray on one node with 2 workers, and a two-node
Ray cluster on loopback — side by side in one run.

    python benchmarks/scaleout_bench.py [--seeds 6] [--limit-train 5000] [--epochs 2]
                                        [-o results/benchmarks/scaleout.json]

The sweep is the STN study with several seeds on reduced data. Its cells are the two models
(each stacks all seeds), so at most two run at once. On this project's 2-core machine every
way shares the same two cores: Ray can only trade the local run's two intra-op threads per
cell for two single-threaded cells side by side, and pays its start-up and task overhead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnistlab import executors
from mnistlab.runs import environment, write_json
from mnistlab.studies.opening import Env
from mnistlab.studies.stn import tutorial as stn


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cfg, executor) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        stn.run(cfg, Path(tmp), Env(executor=executor))
        return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--limit-train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("-o", "--output", default="results/benchmarks/scaleout.json")
    args = parser.parse_args()
    import ray

    cfg = stn.STNConfig(
        epochs=args.epochs,
        seeds=args.seeds,
        limit_train=args.limit_train,
        limit_test=2000,
        train_eval_size=1000,
        device="cpu",
    )
    out: dict = {"seeds": args.seeds, "limit_train": args.limit_train, "epochs": args.epochs}
    out["local_seconds"] = timed(cfg, executors.LocalExecutor())
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out["ray_start_seconds"] = time.perf_counter() - t
    out["ray_one_node_seconds"] = timed(cfg, executors.RayExecutor())
    ray.shutdown()
    cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    port = _port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    opts = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    subprocess.run(
        [cli, "start", "--head", "--port", str(port), "--include-dashboard=false", *opts],
        check=True,
        capture_output=True,
        env=env,
    )
    try:
        subprocess.run(
            [cli, "start", "--address", f"127.0.0.1:{port}", *opts],
            check=True,
            capture_output=True,
            env=env,
        )
        out["ray_two_nodes_seconds"] = timed(cfg, executors.RayExecutor(f"127.0.0.1:{port}"))
    finally:
        ray.shutdown()
        subprocess.run([cli, "stop", "--force"], capture_output=True, env=env)
    for key in ("ray_one_node_seconds", "ray_two_nodes_seconds"):
        out[key.replace("seconds", "speedup")] = out["local_seconds"] / out[key]
    out["environment"] = environment()
    print({k: v for k, v in out.items() if k != "environment"})
    write_json(args.output, out)


if __name__ == "__main__":
    main()
