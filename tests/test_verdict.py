"""The words of a comparison follow its test: a direction word only when significant, and
never "p = 0" or "± 0.00" (one function decides them for every section of the report)."""

import re

import pytest

from mnistlab.report.verdict import answer, compare, signed
from mnistlab.stats import mcnemar, mean_ci_text, paired

# A direction word a reader takes as a verdict.
DIRECTION = re.compile(r"\b(better|worse|helps|helped|beats?|Yes|No:|faster to converge)\b")
NO_VERDICT = re.compile(r"not significant|no significance test possible|cannot decide")


def _words(c):
    return compare(c, "the STN", "the CNN"), answer(c), signed(c)


CASES = {
    # comparison kind → (significant, non-significant) comparisons
    "paired t": (
        paired([0.99, 0.98, 0.985], [0.95, 0.94, 0.946]),
        paired([0.99, 0.92, 0.97], [0.95, 0.95, 0.95]),
    ),
    "McNemar": (mcnemar(60, 10, 1000), mcnemar(12, 8, 1000)),
}


@pytest.mark.parametrize("kind", CASES)
def test_significant_comparisons_get_a_direction_word(kind):
    sig, _ = CASES[kind]
    sentence, yes_no, cell = _words(sig)
    assert sentence.startswith("the STN is better than the CNN by ")
    assert "(significant at 5 %: p = " in sentence
    assert yes_no == "Yes" and cell.startswith("+")


@pytest.mark.parametrize("kind", CASES)
def test_significant_negative_differences_say_worse_and_no(kind):
    sig, _ = CASES[kind]
    flipped = type(sig)(-sig.diff, sig.p, sig.test, sig.n, sig.why)
    sentence, yes_no, cell = _words(flipped)
    assert "the STN is worse than the CNN by" in sentence
    assert yes_no == "No" and cell.startswith("−")


@pytest.mark.parametrize("kind", CASES)
def test_non_significant_comparisons_say_what_was_measured_and_no_verdict(kind):
    _, nonsig = CASES[kind]
    sentence, yes_no, cell = _words(nonsig)
    assert re.match(r"the STN measured \d+\.\d\d points higher than the CNN", sentence)
    assert "(not significant at 5 %: p = " in sentence
    assert yes_no == "Not shown at 5 %"
    assert not DIRECTION.search(sentence + cell)


def test_one_seed_has_no_test_and_no_verdict():
    c = paired([0.99], [0.95])
    sentence, yes_no, cell = _words(c)
    assert "no significance test possible" in cell
    assert "paired t-test over 1 seed: no significance test possible" in sentence
    assert "measured 4.00 points higher" in sentence and not DIRECTION.search(sentence)
    assert yes_no == "No test can decide"


def test_zero_variance_differences_are_degenerate_never_p_zero():
    c = paired([0.99, 0.98], [0.98, 0.97])  # two identical differences
    assert c.p is None and c.status == "degenerate"
    sentence, yes_no, cell = _words(c)
    assert "all 2 paired differences are equal (zero variance)" in sentence
    assert "p = 0" not in sentence + cell and not DIRECTION.search(sentence + cell)
    assert yes_no == "No test can decide"


def test_models_agreeing_on_every_image_are_degenerate():
    c = mcnemar(0, 0, 1000)
    sentence, yes_no, _ = _words(c)
    assert "agree on every image" in sentence and "measured exactly level" in sentence
    assert yes_no == "No test can decide" and not DIRECTION.search(sentence)


def test_an_underflowed_p_value_is_printed_as_a_bound():
    c = mcnemar(2000, 0, 10_000)  # 0.5 ** 2000 underflows to zero
    assert c.p == 0.0
    assert "p < 1e-300" in compare(c, "a", "b") and "p = 0" not in compare(c, "a", "b")


def test_one_value_prints_no_interval():
    assert mean_ci_text([0.9876, 0.0]) == "98.76 %"
    assert mean_ci_text([0.9876, 0.0012]) == "98.76 ± 0.12 %"
    assert mean_ci_text([0.5, 0.0], 1, 1, "", sign=True) == "+0.5"


def test_the_cli_summary_line_follows_the_same_rule():
    from mnistlab.registry import summary_line

    metrics = {
        "score_epochs": 5,
        "models": {
            "stn": {"primary": {"all": [0.678, 0.0]}},
            "baseline": {"primary": {"all": [0.7, 0.01]}},
        },
    }
    line = summary_line("stn", metrics)
    assert "STN 67.80 %" in line and "CNN 70.00 ± 1.00 %" in line and "± 0.00" not in line
