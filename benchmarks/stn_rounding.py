"""Do the STN verdicts survive a rounding change? Two results roots of the same configurations
(e.g. ``make run`` and the same studies with ``MNISTLAB_NATIVE=0``), every verdict word of
both STN studies side by side: the primary score's paired test per kind, the θ ablations'
tests, the zoom-out magnification's tests (README, "How the STN verdicts are decided").

    python benchmarks/stn_rounding.py RESULTS_A RESULTS_B [-o OUTPUT.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab import runs
from mnistlab.report.sections.stn.common import ablation_tests, verdict
from mnistlab.report.sections.stn.deform import zoom_tests
from mnistlab.report.verdict import answer
from mnistlab.stats import Comparison, mean_ci


def _metrics(root: Path, study: str) -> tuple[dict, dict]:
    (folder,) = [p for p in (root / study).iterdir() if (p / "metrics.json").is_file()]
    env = runs.read_json(folder / "config.json").get("environment", {})
    return runs.read_json(folder / "metrics.json"), env


def _word(c: Comparison) -> dict:
    return {"diff": c.diff, "p": c.p, "answer": answer(c)}


def compare(m: dict) -> dict:
    """Every verdict of one run of one STN study."""
    out = {}
    for kind in m["kinds"]:
        a = m["models"]
        out[kind] = {
            "stn_per_seed": a["stn"]["per_seed_primary"][kind],
            "cnn_per_seed": a["baseline"]["per_seed_primary"][kind],
            "stn": mean_ci(a["stn"]["per_seed_primary"][kind]),
            "cnn": mean_ci(a["baseline"]["per_seed_primary"][kind]),
            "verdict": _word(verdict(m, kind)),
            "ablations": {k: _word(c) for k, c in ablation_tests(m, kind).items()},
        }
    if "magnification" in m:
        mag, vs_none, vs_full = zoom_tests(m)
        out["magnification"] = {
            "per_seed": mag,
            "vs_none": _word(vs_none),
            "vs_full_undo": _word(vs_full),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs=2, type=Path)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    report: dict = {"roots": [str(r) for r in args.roots]}
    for study in ("stn", "stn-deform"):
        runs_ = [_metrics(r, study) for r in args.roots]
        report[study] = [{"environment": env, **compare(m)} for m, env in runs_]
        for kind in runs_[0][0]["kinds"]:
            words = [r[kind]["verdict"]["answer"] for r in report[study]]
            same = "same" if len(set(words)) == 1 else "FLIPS"
            print(f"{study:10s} {kind:8s} {' | '.join(words):40s} {same}")
    if args.output:
        runs.write_json(args.output, report)


if __name__ == "__main__":
    main()
