"""What every section shares: its shape, its opening, number formatting and published data.

Every number is read from a study's verified result files and its ``config.json``; every
verdict is worded by :mod:`mnistlab.report.verdict` from the test computed beside it, so it
flips when the numbers flip. Published numbers come from ``published.json`` with their
sources, never from the section modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mnistlab import registry, runs
from mnistlab.stats import mean_ci_text

PUBLISHED = Path(__file__).parents[1] / "published.json"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    missing: str | None = None  # why the section has no results


def opening(
    study: str, folder: Path | None
) -> tuple[Section, dict[str, Any], dict[str, Any]] | tuple[Section, None, None]:
    """A study's section with its title from the registry, its metrics and resolved config;
    without a finished run, the section says so and names the command that makes one."""
    sec = Section(study, registry.get(study).title)
    if folder is None:
        sec.missing = f"no finished {study} run found ({registry.get(study).command})"
        return sec, None, None
    return sec, runs.read_json(folder / "metrics.json"), config(folder)


def config(folder: Path) -> dict[str, Any]:
    return runs.read_json(folder / "config.json")["config"]


@cache
def _published_text() -> str:
    return PUBLISHED.read_text(encoding="utf-8")


def published() -> dict[str, Any]:
    return json.loads(_published_text())


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f} %"


def pm(
    pair: list | tuple, scale: float = 100, digits: int = 2, unit: str = " %", sign: bool = False
) -> str:
    """``[mean, ci]`` → ``"m ± ci %"``; the value alone when the interval has no width."""
    return mean_ci_text(pair, scale, digits, unit, sign=sign)


def published_table(headers: list[str], rows: list[list[str]], caption: str) -> list[Table]:
    """Published numbers beside this run's, with their source; nothing when none compare."""
    return [Table(headers, rows, caption)] if rows else []


def fig(folder: Path, stem: str, caption: str) -> list[tuple[Path, str]]:
    path = folder / f"{stem}.png"
    return [(path, caption)] if path.is_file() else []


def span(lo: float, hi: float) -> str:
    return f"{lo:g} %" if lo == hi else f"{lo:g}–{hi:g} %"


def against_range(value: float, lo: float, hi: float, what: str) -> str:
    """Where ``value`` (%) sits relative to a published range [lo, hi] (%)."""
    if value > hi:
        return f"{value:.2f} % is {value - hi:.2f} points above {what} ({span(lo, hi)})"
    if value < lo:
        return f"{value:.2f} % is {lo - value:.2f} points below {what} ({span(lo, hi)})"
    return f"{value:.2f} % is within {what} ({span(lo, hi)})"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def target(value: float, goal: float | None) -> str:
    if goal is None:
        return "—"
    return f"met ({value:.2f} ≥ {goal:g})" if value >= goal else f"missed ({value:.2f} < {goal:g})"


def picks(chosen: dict[str, int]) -> str:
    """``L-BFGS probe, l2, C=1 ×3; Adam head, lr 0.003 ×2`` (most frequent first)."""
    return "; ".join(f"{k} ×{v}" for k, v in sorted(chosen.items(), key=lambda kv: -kv[1]))
