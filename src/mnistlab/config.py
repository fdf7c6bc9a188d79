"""Config fields that carry their own help, and the range checks every config runs.

A study's config dataclass is the single source of its defaults: the CLI builds its options
from these fields (help text, unit and default shown), and ``__post_init__`` validates the
values, so a library caller and a command-line user get the same one-line error before any
work starts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mnistlab.errors import MnistlabError

SEED_MAX = 2**32 - 1  # numpy's legacy seeding limit; seed + offsets stay far below 2**63
DEVICES = ("auto", "cpu", "cuda", "mps")


def option(
    default: Any,
    help: str,
    *,
    unit: str = "",
    cli: str | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with the help text the CLI shows. ``cli`` renames its option;
    ``cli=""`` keeps it library-only, ``cli="hidden"`` accepts it without advertising it."""
    meta: dict[str, Any] = {"help": help, "unit": unit, "choices": choices}
    if cli is not None:
        meta["cli"] = cli
    if isinstance(default, list | dict | set):
        raise TypeError("use tuples for sequence defaults (configs are frozen and hashed)")
    return dataclasses.field(default=default, metadata=meta)


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MnistlabError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_float(value: Any, what: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if open_lo else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if open_lo else "["
        raise MnistlabError(
            f"{what} must be a finite number in {bracket}{lo:g}, {hi:g}], got {value!r}"
        )
    return float(value)


def check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise MnistlabError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_seed(value: Any, what: str = "seed") -> int:
    return check_int(value, what, 0, SEED_MAX)


def check_device(value: Any) -> str:
    """Syntax only (``cpu``, ``cuda:1``, …); availability is checked where it is resolved."""
    kind, _, index = str(value).partition(":")
    if kind not in DEVICES or (index and (kind == "auto" or not index.isdigit())):
        raise MnistlabError(f"unknown device {value!r}; choose one of: {', '.join(DEVICES)}")
    return value
