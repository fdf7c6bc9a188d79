"""Statistics shared by studies and the report (numpy and scipy; no torch).

Confidence intervals are Student-t over seeds. Comparisons come with a test whose verdict the
report prints beside the p-value: a paired t-test where seeds pair the runs (same data draw,
same batch order) and McNemar's exact test for two single
models scored on the same test images (it needs only the discordant counts).
"""

from __future__ import annotations

import base64
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (0 for a single value)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def mean_ci_text(
    pair: Sequence[float],
    scale: float = 100,
    digits: int = 2,
    unit: str = " %",
    *,
    sign: bool = False,
) -> str:
    """``[mean, half-width]`` → ``"98.73 ± 0.12 %"``; a zero-width interval (one seed, or seeds
    that agree exactly) prints the value alone, because "± 0.00" would claim a precision that
    one run cannot show. The one formatting rule for the report and the command line."""
    mean, half = scale * pair[0], scale * pair[1]
    value = f"{mean:{'+' if sign else ''}.{digits}f}"
    if half == 0 or not math.isfinite(half):
        return f"{value}{unit}"
    return f"{value} ± {half:.{digits}f}{unit}"


def p_text(p: float) -> str:
    """``p = 0.012``; a p-value that underflowed to zero is printed as a bound, never as 0."""
    return "p < 1e-300" if p <= 0 else f"p = {p:.3g}"


SIGNIFICANT, NOT_SIGNIFICANT, NO_TEST, DEGENERATE = (
    "significant",
    "not significant",
    "no test",
    "degenerate",
)


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: the mean difference, the test used and its p-value.

    ``p`` is None when the test cannot decide: one run each (``NO_TEST``), or a degenerate
    test whose statistic is undefined — zero variance of the paired differences, or two models
    that agree on every image (``DEGENERATE``, with ``why``). :attr:`status` is the one place
    where the kind of evidence is decided; the report's words follow it."""

    diff: float
    p: float | None
    test: str
    n: int
    why: str = ""  # why a degenerate test decides nothing

    @property
    def status(self) -> str:
        if self.p is None:
            return DEGENERATE if self.why else NO_TEST
        return SIGNIFICANT if self.p < ALPHA else NOT_SIGNIFICANT

    @property
    def significant(self) -> bool:
        return self.status == SIGNIFICANT

    def evidence(self) -> str:
        """``p = 0.012, paired t-test over 5 seeds`` or why no test could decide."""
        if self.status == NO_TEST:
            return f"{self.test}: no significance test possible"
        if self.status == DEGENERATE:
            return f"{self.test}: {self.why}, so the test cannot decide"
        return f"{p_text(self.p)}, {self.test}"  # type: ignore[arg-type]


def paired(a: Sequence[float], b: Sequence[float], what: str = "seeds") -> Comparison:
    """Paired t-test of ``a − b`` (the seeds pair the runs)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError("paired samples differ in length")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    test = f"paired t-test over {len(d)} {what if len(d) != 1 else what.rstrip('s')}"
    if len(d) < 2:
        return Comparison(float(d.mean()) if len(d) else math.nan, None, test, len(d))
    if np.all(d == d[0]):  # no spread: the t statistic is undefined (0/0 or ±inf)
        why = f"all {len(d)} paired differences are equal (zero variance)"
        return Comparison(float(d[0]), None, test, len(d), why)
    with warnings.catch_warnings():  # scipy warns when differences are nearly identical
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(a, b).pvalue)
    return Comparison(float(d.mean()), p, test, len(d))


def holm(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm's step-down correction over a family of tests: each comparison with its p-value
    adjusted (``min(1, max over the first i sorted of (m − j + 1)·p_j)``), so that "significant"
    keeps the family's error rate at ``alpha``. Comparisons without a p-value are kept as they
    are and do not count towards m."""
    tested = sorted((c.p, i) for i, c in enumerate(comparisons) if c.p is not None)
    m = len(tested)
    adjusted: dict[int, float] = {}
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    out = []
    for i, c in enumerate(comparisons):
        if i in adjusted:
            test = f"{c.test}, Holm-corrected over {m} tests"
            out.append(Comparison(c.diff, adjusted[i], test, c.n, c.why))
        else:
            out.append(c)
    return out


def one_sample(values: Sequence[float], mu: float, what: str = "seeds") -> Comparison:
    """One-sample t-test of ``values`` against ``mu`` (``diff`` = mean − ``mu``): e.g. the
    log of a magnification per seed against log 1 (no zoom) or log Z (a full undo)."""
    zeros = [mu] * len(values)
    c = paired(values, zeros, what)
    test = c.test.replace("paired t-test", "one-sample t-test")
    return Comparison(c.diff, c.p, test, c.n, c.why)


def mcnemar(a_only: int, b_only: int, n: int) -> Comparison:
    """Two models on the same ``n`` test images: ``a_only`` images only ``a`` got right,
    ``b_only`` only ``b``. Exact binomial test on the discordant pairs."""
    from scipy import stats

    diff = (a_only - b_only) / n if n else math.nan
    test = f"McNemar's exact test on {n} test images"
    if a_only + b_only == 0:
        return Comparison(diff, None, test, n, "the two models agree on every image")
    p = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    return Comparison(diff, float(p), test, n)


# --------------------------------------------------------------------- per-image correctness


def pack_correct(correct: Sequence[bool] | np.ndarray) -> str:
    """Which test images a model got right, as base64 bits (10k images ≈ 1.7 kB of JSON)."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> np.ndarray:
    bits = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(bits)[:n].astype(bool)


def compare_correct(a: str, b: str, n: int, mask: np.ndarray | None = None) -> Comparison:
    """McNemar for two packed correctness vectors (optionally on a subset of images)."""
    ca, cb = unpack_correct(a, n), unpack_correct(b, n)
    if mask is not None:
        ca, cb = ca[mask], cb[mask]
    return mcnemar(int(np.sum(ca & ~cb)), int(np.sum(~ca & cb)), len(ca))
