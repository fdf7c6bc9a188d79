"""Run one benchmark function under two revisions of mnistlab, side by side on one machine.

Old and new code run in fresh processes (``PYTHONPATH`` = a git worktree's ``src`` or this
checkout's), alternating for ``rounds`` rounds so that drift of the machine's speed hits both
alike; a function's result is whatever JSON it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """The ``src`` folder of a temporary git worktree at ``rev``."""
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "old"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "-q", "--detach", str(wt), rev], check=True)
        try:
            yield wt / "src"
        finally:
            subprocess.run([*git, "remove", "--force", str(wt)], check=True)


def call(src: Path, module: str, function: str, *args) -> object:
    """``module.function(*args)`` (a module in ``benchmarks/``) with mnistlab from ``src``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        code = (
            "import json, sys; "
            f"sys.path.insert(0, {str(BENCHMARKS)!r}); "
            f"import {module} as m; "
            f"json.dump(m.{function}(*{list(args)!r}), open({str(out)!r}, 'w'))"
        )
        env = {**os.environ, "PYTHONPATH": str(src)}
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        return json.loads(out.read_text())


def side_by_side(rev: str | None, rounds: int, module: str, function: str, *args) -> dict:
    """Per round the old code's result (when ``rev`` is given), then the new code's."""
    runs: dict[str, list] = {"old": [], "new": []}
    with worktree(rev) if rev else contextlib.nullcontext() as old_src:
        for _ in range(rounds):
            if old_src is not None:
                runs["old"].append(call(old_src, module, function, *args))
            runs["new"].append(call(ROOT / "src", module, function, *args))
    return runs
