"""Config fields that carry their own help, and the range checks every config runs.

A study's config dataclass is the single source of its defaults and ranges: the CLI builds
its options from these fields (help text, unit and default shown), and ``__post_init__``
validates the values against the ranges declared on them, so a library caller and a
command-line user get the same one-line error, naming the option the user typed, before any
work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
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
    lo: float | None = None,
    hi: float | None = None,
    open_lo: bool = False,
    open_hi: bool = False,
) -> Any:
    """A dataclass field with the help text the CLI shows and the range :func:`validate`
    enforces (on every item of a tuple). ``cli`` renames its option; ``cli=""`` keeps it
    library-only, ``cli="hidden"`` accepts it without advertising it."""
    meta: dict[str, Any] = {"help": help, "unit": unit, "choices": choices}
    meta |= {"lo": lo, "hi": hi, "open_lo": open_lo, "open_hi": open_hi}
    if cli is not None:
        meta["cli"] = cli
    if isinstance(default, list | dict | set):
        raise TypeError("use tuples for sequence defaults (configs are frozen and hashed)")
    return dataclasses.field(default=default, metadata=meta)


def flag(f: dataclasses.Field) -> str:
    """What a user types for this field (``--epochs`` for ``max_epochs`` if it says so); a
    library-only field is named by its own name. The CLI and every error message use this."""
    cli = f.metadata.get("cli")
    if cli == "":
        return f.name
    if cli and cli != "hidden":
        return cli
    return f"--{f.name.replace('_', '-')}"


def flag_of(config: Any, name: str) -> str:
    return flag(next(f for f in dataclasses.fields(config) if f.name == name))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def validate(config: Any) -> None:
    """Check every declared choice and range of ``config``; the message names the option the
    user typed. Called first by each config's ``__post_init__``; cross-field rules follow."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if value is None and f.default is None:  # optional, not given
            continue
        many = isinstance(value, tuple)
        items, what = (value, f"{flag(f)} values") if many else ((value,), flag(f))
        if many and not items and (meta.get("lo") is not None or meta.get("choices")):
            raise MnistlabError(f"{flag(f)}: empty list")
        for v in items:
            if meta.get("choices"):
                check_choice(v, what, meta["choices"])
            if meta.get("lo") is None and meta.get("hi") is None:
                continue
            lo, hi = meta["lo"], meta["hi"]
            if hints[f.name] in (int, int | None, tuple[int, ...]):
                check_int(v, what, lo, hi)
            else:
                check_float(v, what, lo, hi, open_lo=meta["open_lo"], open_hi=meta["open_hi"])


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MnistlabError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_float(
    value: Any, what: str, lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False
) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if open_lo else lo <= value)
    ok = ok and (value < hi if open_hi else value <= hi)
    if not ok:
        brackets = ("(" if open_lo else "[", ")" if open_hi else "]")
        raise MnistlabError(
            f"{what} must be a finite number in {brackets[0]}{lo:g}, {hi:g}{brackets[1]}, "
            f"got {value!r}"
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


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What the image studies share: hidden limits for tests and benchmarks, and the device.
    (Configs hash over sorted field names, so a base class changes no results folder.)"""

    limit_train: int | None = option(
        None, "use the first N training images", cli="hidden", lo=1, hi=10**7
    )
    limit_test: int | None = option(
        None, "use the first N test images", cli="hidden", lo=1, hi=10**7
    )
    device: str = option("auto", "auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps")

    def __post_init__(self) -> None:
        validate(self)
        check_device(self.device)
