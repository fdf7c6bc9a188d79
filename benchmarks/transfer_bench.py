"""The digits-best transfer grid (its slowest cell) on a finished search, old code vs new.

    python benchmarks/transfer_bench.py RUN_FOLDER [--against REV] [-o OUTPUT.json]

``RUN_FOLDER`` is a ``results/digits-best/<hash>`` folder whose ``search`` and ``source`` cells
are done (``mnistlab run digits-best --best-trials 2`` makes one in a few minutes; the grid does
not depend on how good the source is). The grid runs in a scratch copy of that folder with this
checkout's code and, with ``--against``, with the code of revision ``REV`` (a git worktree),
one after the other in fresh processes on the same machine: wall time of each, the ratio, and
whether both chose the same recipes with the same per-seed test accuracies.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from mnistlab.runs import environment, write_json
from revisions import side_by_side


def grid(folder: str) -> dict:
    """Run the transfer cell in ``folder`` (a copy: its ``transfer`` files are written) with
    whichever mnistlab is importable."""
    import torch

    from mnistlab.progress import default as default_progress
    from mnistlab.runs import read_json
    from mnistlab.studies.digits.best import DigitsBestConfig, transfer
    from mnistlab.studies.digits.common import CellContext

    folder = Path(folder)
    saved = read_json(folder / "config.json")
    fields = saved.get("config", saved)
    known = DigitsBestConfig.__dataclass_fields__
    cfg = DigitsBestConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
    )
    ctx = CellContext(cfg, folder, torch.device("cpu"), default_progress(), None, lambda n: {})
    t0 = time.perf_counter()
    res = transfer(ctx, cfg)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "chosen": {v: r["chosen"] for v, r in res.items()},
        "per_seed_test_acc": {v: r["per_seed_test_acc"] for v, r in res.items()},
        "val_acc": {v: r["val_acc"] for v, r in res.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--against", help="git revision of the old code")
    parser.add_argument("-o", "--output", default="results/benchmarks/transfer.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "run"  # the grid's own files are not kept: each run starts clean
        shutil.copytree(args.folder, scratch, ignore=shutil.ignore_patterns("transfer*"))
        runs = side_by_side(args.against, 1, "transfer_bench", "grid", str(scratch))
    result: dict = {"new": runs["new"][0]}
    print(f"new: {result['new']['seconds']:.1f} s")
    if args.against:
        old = result["old"] = {"rev": args.against, **runs["old"][0]}
        new = result["new"]
        print(f"old ({args.against}): {old['seconds']:.1f} s")
        result["speedup"] = old["seconds"] / new["seconds"]
        result["same_choices"] = old["chosen"] == new["chosen"]
        result["max_test_acc_difference"] = max(
            abs(a - b)
            for v in new["per_seed_test_acc"]
            for a, b in zip(old["per_seed_test_acc"][v], new["per_seed_test_acc"][v], strict=True)
        )
        print(
            f"speed-up {result['speedup']:.2f}×; same choices: {result['same_choices']}; "
            f"largest per-seed test-accuracy difference {result['max_test_acc_difference']:.4f}"
        )
    result["environment"] = environment()
    write_json(args.output, result)


if __name__ == "__main__":
    main()
