"""The words of every comparison in the report, decided in one place from its test.

A reader trusts the word before the parenthesis, so a direction word ("better", "worse",
"Yes", "helped") is written only when the comparison's own test is significant at the stated
level. Otherwise the sentence says what was measured and why it is no verdict: not significant
(with its p-value), no test possible (one seed), or a degenerate test (zero variance of the
paired differences, two models agreeing on every image) — never "p = 0".
"""

from __future__ import annotations

from mnistlab.stats import ALPHA, DEGENERATE, NO_TEST, SIGNIFICANT, Comparison

LEVEL = f"{100 * ALPHA:g} %"


def amount(diff: float, scale: float = 100, unit: str = "point") -> str:
    """``0.27 points`` (magnitude only; the direction is worded by the caller)."""
    x = abs(scale * diff)
    return f"{x:.2f} {unit}{'' if x == 1 else 's'}"


def qualifier(c: Comparison) -> str:
    """What the test says, for a parenthesis: ``significant at 5 %: p = 0.003, paired …``."""
    if c.status == SIGNIFICANT:
        return f"significant at {LEVEL}: {c.evidence()}"
    if c.status in (NO_TEST, DEGENERATE):
        return f"no verdict — {c.evidence()}"
    return f"not significant at {LEVEL}: {c.evidence()}"


def compare(
    c: Comparison,
    a: str,
    b: str,
    *,
    higher: str = "better",
    lower: str = "worse",
    scale: float = 100,
    unit: str = "point",
) -> str:
    """The sentence for ``a − b``: ``STN is better than the CNN by 0.31 points (significant …)``
    only when significant; else ``STN measured 0.31 points higher than the CNN (not
    significant …)``."""
    size = amount(c.diff, scale, unit)
    if c.diff == 0:
        return f"{a} and {b} measured exactly level ({qualifier(c)})"
    if c.status == SIGNIFICANT:
        word = higher if c.diff > 0 else lower
        return f"{a} is {word} than {b} by {size} ({qualifier(c)})"
    side = "higher" if c.diff > 0 else "lower"
    return f"{a} measured {size} {side} than {b} ({qualifier(c)})"


def signed(c: Comparison, scale: float = 100, unit: str = "point") -> str:
    """A table cell: ``+0.90 points (not significant at 5 %: p = 0.31, …)``."""
    sign = "+" if c.diff > 0 else "−" if c.diff < 0 else ""
    return f"{sign}{amount(c.diff, scale, unit)} ({qualifier(c)})"


def answer(c: Comparison, yes: str = "Yes", no: str = "No") -> str:
    """A yes/no question answered by its test: ``Yes`` / ``No`` only when significant."""
    if c.status == SIGNIFICANT:
        return yes if c.diff > 0 else no
    if c.status in (NO_TEST, DEGENERATE):
        return "No test can decide"
    return f"Not shown at {LEVEL}"


def across_seeds(verdict: Comparison, per_seed: list[Comparison], a: str = "the STN") -> str:
    """Whether a verdict over seeds holds in each seed's own test (McNemar on its images).

    A verdict over seeds can rest on a mean that one run carries; reading each seed's own test
    beside it says whether the runs agree. Direction words again only from significant tests.
    """
    cells = ", ".join(f"seed {i}: {signed(c)}" for i, c in enumerate(per_seed))
    n = len(per_seed)
    ahead = sum(c.diff > 0 for c in per_seed)
    better = sum(c.significant and c.diff > 0 for c in per_seed)
    worse = sum(c.significant and c.diff < 0 for c in per_seed)
    if verdict.significant:
        held = better if verdict.diff > 0 else worse
        summary = (
            "the verdict held in every seed's own test"
            if held == n
            else f"the verdict held in {held} of {n} seeds' own tests"
        )
    else:
        summary = (
            f"no verdict over seeds; {a} measured ahead in {ahead} of {n} seeds, "
            f"significantly ahead in its own test in {better} and significantly behind in {worse}"
        )
    return f"Seed by seed — {cells}: {summary}."
