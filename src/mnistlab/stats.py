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


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: the mean difference, the test used and its p-value (None when no
    test is possible, e.g. one run each)."""

    diff: float
    p: float | None
    test: str
    n: int

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    def word(self, higher: str = "better", lower: str = "worse", same: str = "the same") -> str:
        """The direction of ``a − b``; "the same" only for an exactly zero difference."""
        return higher if self.diff > 0 else lower if self.diff < 0 else same

    def evidence(self) -> str:
        """``p = 0.012, paired t-test over 5 seeds: significant at 5 %`` (or why none)."""
        if self.p is None:
            return f"{self.test}: no significance test possible"
        verdict = "significant" if self.significant else "not significant"
        return f"p = {self.p:.3g}, {self.test}: {verdict} at {100 * ALPHA:g} %"


def paired(a: Sequence[float], b: Sequence[float], what: str = "seeds") -> Comparison:
    """Paired t-test of ``a − b`` (the seeds pair the runs)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError("paired samples differ in length")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    test = f"paired t-test over {len(d)} {what if len(d) != 1 else what.rstrip('s')}"
    if len(d) < 2:
        return Comparison(float(d.mean()) if len(d) else math.nan, None, test, len(d))
    if np.all(d == d[0]):  # no spread: the t statistic is undefined
        return Comparison(float(d[0]), 0.0 if d[0] != 0 else 1.0, test, len(d))
    with warnings.catch_warnings():  # scipy warns when differences are nearly identical
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(a, b).pvalue)
    return Comparison(float(d.mean()), p, test, len(d))


def mcnemar(a_only: int, b_only: int, n: int) -> Comparison:
    """Two models on the same ``n`` test images: ``a_only`` images only ``a`` got right,
    ``b_only`` only ``b``. Exact binomial test on the discordant pairs."""
    from scipy import stats

    diff = (a_only - b_only) / n if n else math.nan
    test = f"McNemar's exact test on {n} test images"
    if a_only + b_only == 0:
        return Comparison(diff, 1.0, test, n)
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
