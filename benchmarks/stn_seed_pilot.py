"""How many seeds the STN studies need: the per-seed spread of the pre-registered primary
score, measured on pilot seeds that the decisive runs never use.

    python benchmarks/stn_seed_pilot.py --results /tmp/pilot [--seeds 4] [--seed 100]
        [-o docs/benchmarks/stn_seed_pilot_DATE.json]

Runs the full-profile ``stn`` and ``stn-deform`` studies (as ``make run`` does: two worker
processes, one thread each, each model's seeds one stack) with ``--seeds`` seeds starting at
``--seed`` (100: disjoint from the study's own 0, 1, …), then reads every seed's history and
computes, per kind, the primary score (mean test accuracy over the last 5 epochs) of the STN
and the CNN, the paired difference per seed, its standard deviation, and the effect a paired
t-test over n seeds detects with 80 % power at α = 0.05 for n = 3 … 10 (README, "How the STN
verdicts are decided"). The same numbers for the 20th-epoch score are printed beside them,
so the two scores' spreads can be compared.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from mnistlab import parallel, registry, runs, suite
from mnistlab.progress import LineProgress
from mnistlab.stats import mean_sd

LAST = 5  # the pre-registered window: mean over the last 5 epochs


def detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with
    ``power`` (noncentral t, solved by bisection), for paired differences of spread ``sd``."""
    from scipy import stats

    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def achieved(delta: float) -> float:
        nc = delta / (sd / math.sqrt(n))
        return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)

    lo, hi = 0.0, 20 * sd + 1e-12
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if achieved(mid) < power else (lo, mid)
    return hi


def _histories(folder: Path) -> dict[str, list[list[dict]]]:
    """Per model, per seed: the epoch rows of its history CSV."""
    out = {}
    for model in ("stn", "baseline"):
        with open(folder / f"history_{model}.csv") as f:
            rows = list(csv.DictReader(f))
        seeds = sorted({r["seed"] for r in rows}, key=int)
        out[model] = [
            sorted((r for r in rows if r["seed"] == s), key=lambda r: int(r["epoch"]))
            for s in seeds
        ]
    return out


def _spread(folder: Path, kinds: tuple[str, ...]) -> dict:
    hist = _histories(folder)
    out = {}
    for kind in kinds:
        key = "test_acc" if kind == "all" else f"test_acc_{kind}"
        kind_out = {}
        for score, pick in (
            ("last5_mean", lambda rows, key=key: sum(float(r[key]) for r in rows[-LAST:]) / LAST),
            ("final_epoch", lambda rows, key=key: float(rows[-1][key])),
        ):
            per = {m: [100 * pick(rows) for rows in hist[m]] for m in hist}
            diff = [a - b for a, b in zip(per["stn"], per["baseline"], strict=True)]
            mean, sd = mean_sd(diff)
            kind_out[score] = {
                "stn": per["stn"],
                "cnn": per["baseline"],
                "diff_points": diff,
                "diff_mean": mean,
                "diff_sd": sd,
                "sd_stn": mean_sd(per["stn"])[1],
                "sd_cnn": mean_sd(per["baseline"])[1],
                "detectable_80pct": {n: detectable_effect(sd, n) for n in range(3, 11)},
            }
        out[kind] = kind_out
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    root = args.results.resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = suite.Settings(root)
    configs = {
        name: registry.get(name).config(seed=args.seed, seeds=args.seeds, device="cpu")
        for name in ("stn-deform", "stn")
    }
    jobs = [suite._job(name, cfg, settings, "full") for name, cfg in configs.items()]
    t0 = time.perf_counter()
    seconds = {}
    parallel.run_jobs(
        jobs,
        suite._run_job,
        workers=2,
        progress=LineProgress(),
        on_result=lambda job, metrics, s: seconds.__setitem__(job.name, s),
    )
    report = {
        "environment": runs.environment(),
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "wall_seconds": time.perf_counter() - t0,
        "study_seconds": seconds,
        "window": LAST,
        "stn": _spread(runs.run_dir(root, "stn", configs["stn"]), ("all",)),
        "stn-deform": _spread(
            runs.run_dir(root, "stn-deform", configs["stn-deform"]),
            ("all", "original", "elastic", "zoom"),
        ),
    }
    for study in ("stn", "stn-deform"):
        for kind, scores in report[study].items():
            for score, s in scores.items():
                print(
                    f"{study:10s} {kind:8s} {score:11s} diff {s['diff_mean']:+6.2f} "
                    f"sd {s['diff_sd']:5.2f}  80% power at n=5: "
                    f"{s['detectable_80pct'][5]:5.2f} points"
                )
    if args.output:
        runs.write_json(args.output, report)


if __name__ == "__main__":
    main()
