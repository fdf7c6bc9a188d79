"""Why ``run all`` runs two studies side by side on a small CPU: one process with all cores vs
one single-threaded process per core, at the STN study's training step.

    python benchmarks/jobs_bench.py [--rounds 3] [--steps 200] [-o OUTPUT.json]

Each round, for the STN and for its CNN (K = 3 seeds in one stack, batch 64, as in the study):
one fresh process with every core's thread, then ``cores`` fresh single-threaded processes at
once. Reported: ms per member-step of each, and the throughput ratio (members stepped per
second by the concurrent processes together / by the one process). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from mnistlab.runs import environment, write_json

HERE = Path(__file__).resolve().parent
CHILD = """
import json, sys, torch
sys.path.insert(0, {here!r})
from stn_kernels import step_ms
from mnistlab.train.allocator import keep_freed_memory
keep_freed_memory()
torch.set_num_threads({threads})
print(json.dumps(step_ms({use_stn}, k=3, steps={steps})["ms_per_member_step"]))
"""


def _start(use_stn: bool, threads: int, steps: int) -> subprocess.Popen:
    code = CHILD.format(here=str(HERE), threads=threads, use_stn=use_stn, steps=steps)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _ms(procs: list[subprocess.Popen]) -> list[float]:
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a benchmark process failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def measure(use_stn: bool, rounds: int, steps: int) -> dict:
    cores = os.cpu_count() or 1
    one, many = [], []
    for _ in range(rounds):
        one.append(_ms([_start(use_stn, cores, steps)])[0])
        many.append(_ms([_start(use_stn, 1, steps) for _ in range(cores)]))
    one_ms = statistics.median(one)
    many_ms = statistics.median(statistics.mean(r) for r in many)
    return {
        "one_process_ms_per_member_step": one_ms,
        "each_single_thread_process_ms_per_member_step": many_ms,
        "processes": cores,
        "throughput_ratio": cores * one_ms / many_ms,
        "rounds": {"one": one, "many": many},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    result = {
        "environment": environment(),
        "stn": measure(True, args.rounds, args.steps),
        "cnn": measure(False, args.rounds, args.steps),
    }
    for model in ("stn", "cnn"):
        r = result[model]
        one, each = (
            r["one_process_ms_per_member_step"],
            r["each_single_thread_process_ms_per_member_step"],
        )
        print(
            f"{model}: one process {one:.2f} ms/member-step, {r['processes']} single-threaded "
            f"ones {each:.2f} each → {r['throughput_ratio']:.2f}× the throughput"
        )
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
