"""The report, built from results that the real study code wrote (tiny runs of every study).

Each verdict is checked to flip when the numbers it rests on flip: the numbers are edited in a
copy of a real results folder (same schema, re-written with its digest), never hand-written.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistlab import registry, runs
from mnistlab.cli import main
from mnistlab.report import sections
from mnistlab.report.build import build_report
from mnistlab.stats import pack_correct, unpack_correct

from .conftest import copy_study as _copy
from .conftest import edit_json as _edit
from .conftest import section_text as _text

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# ----------------------------------------------------------------------------- the whole report


def test_report_from_real_results_is_self_contained(results):
    html_path, md_path = build_report(results)
    html = html_path.read_text()
    assert html.count("QUICK PROFILE") >= 6  # on every study section
    assert "Not available" not in html
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) >= 12 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "RANDOM WEIGHTS" in html  # the few-shot backbone's weights are labelled
    assert "McNemar" in html and "paired t-test" in html
    md = md_path.read_text()
    assert "| resnet18 (random) | 2 |" in md


def _sentences(text):
    """Sentences of the report: one per table cell or list item, prose split at full stops."""
    for line in text.splitlines():
        for cell in line.strip("|").split(" | "):
            yield from re.split(r"(?<=[.!?])\s+(?=[A-Z])", cell)


def test_no_sentence_of_the_report_claims_what_its_test_does_not_support(results):
    from .test_verdict import DIRECTION, NO_VERDICT

    _, md_path = build_report(results)
    text = md_path.read_text()
    claims = [s for s in _sentences(text) if DIRECTION.search(s) and NO_VERDICT.search(s)]
    assert claims == []
    assert not re.search(r"p = 0(?![.\d])", text)  # a degenerate test is never "p = 0"
    assert "± 0.00" not in text and "± 0.0 " not in text  # one value prints no interval
    assert text.count("significance test possible") + text.count("not significant") >= 1


def test_report_without_results_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    html_path, _ = build_report(tmp_path / "empty")
    built = [s.report(None) for s in registry.STUDIES.values() if not s.opt_in]  # opt-in: out
    expected = sum(len(b) if isinstance(b, list) else 1 for b in built)
    assert expected >= len(built) and html_path.read_text().count("Not available") == expected


def test_report_cli_and_a_corrupt_result(results, tmp_path, capsys):
    root = tmp_path / "r"
    shutil.copytree(results, root)
    assert main(["report", "--results", str(root)]) == 0
    assert main(["report", "--results", str(tmp_path / "nope")]) == 2
    metrics = root / runs.read_json(root / runs.MANIFEST)["folders"]["stn"] / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:100])  # truncated
    assert main(["report", "--results", str(root)]) == 0
    err = capsys.readouterr().err
    assert "metrics.json is corrupt" in err and "--force" in err
    assert "metrics.json is corrupt" in (root / "report.html").read_text()


def test_report_does_not_import_torch(results):
    code = (
        "import sys; from mnistlab.report.build import build_report; "
        f"build_report({str(results)!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- verdicts flip


def test_fewshot_flattery_and_plateau_follow_the_numbers(results, tmp_path):
    folder = _copy(results, tmp_path, "fewshot")

    def edit(fn):
        _edit(
            folder / "metrics.json", lambda m: [fn(r) for r in m["backbones"]["resnet18"]["table"]]
        )
        return _text(sections.fewshot(folder))

    def equal(r):
        r["per_seed_val_epoch_same_lr_test_acc"] = list(r["per_seed_best_test_acc"])

    text = edit(equal)
    assert "measured exactly level" in text and "zero variance" in text

    def lower(r):
        r["per_seed_val_epoch_same_lr_test_acc"] = [
            v - 0.02 - 0.001 * i for i, v in enumerate(r["per_seed_best_test_acc"])
        ]

    text = edit(lower)
    assert "the reported test accuracy is higher than with the epoch chosen on validation" in text

    def plateau(r):
        r["epochs_to_best"], r["epochs_to_near_best"] = [80, 1], [10, 1]

    assert "lies on a plateau" in edit(plateau)

    def rising(r):
        r["epochs_to_best"], r["epochs_to_near_best"] = [80, 1], [75, 1]

    assert "still rising" in edit(rising)


def _per_seed(folder, part, values):
    """Set per-seed fields of a part-1 result: ``values[model][field]`` = one per seed."""

    def change(r):
        for model, fields in values.items():
            for key, per_seed in fields.items():
                for row, v in zip(r["by_seed"][model], per_seed, strict=True):
                    row[key] = v

    _edit(folder / part / "result.json", change)
    return _text(sections.digits(folder)[0])


def test_dropout_is_chosen_on_validation_not_test(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")
    by = runs.read_json(folder / "dropout" / "result.json")["by_seed"]
    n = len(by["0.0"])
    rates = list(by)  # "0.0" and the tiny profile's two rates

    def choose(val, prec):
        return _per_seed(
            folder,
            "dropout",
            {
                r: {"val_acc_at_best": [val[i]] * n, "test_precision": [prec[i]] * n}
                for i, r in enumerate(rates)
            },
        )

    # the best test precision belongs to the last rate, validation prefers the middle one
    text = choose([0.95, 0.97, 0.96], [0.95, 0.94, 0.99])
    assert f"validation chose dropout {rates[1]}" in text
    text = choose([0.99, 0.97, 0.96], [0.95, 0.94, 0.99])
    assert "**Does dropout help?** Not on validation" in text


def test_dropout_answer_follows_its_test_over_seeds(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")
    by = runs.read_json(folder / "dropout" / "result.json")["by_seed"]
    n, rate = len(by["0.0"]), list(by)[1]
    assert n >= 2  # the comparison is paired over seeds

    def acc(chosen, plain):
        vals = {r: {"val_acc_at_best": [1.0 if r == rate else 0.5] * n} for r in by}
        vals[rate]["test_acc"], vals["0.0"]["test_acc"] = chosen, plain
        return _per_seed(folder, "dropout", vals)

    up = [0.99 - 0.001 * i for i in range(n)]
    down = [0.97 - 0.003 * i for i in range(n)]
    assert "**Does dropout help?** Yes: validation chose dropout" in acc(up, down)
    assert "**Does dropout help?** No: validation chose" in acc(down, up)
    text = acc(up, [u - 0.01 for u in up])  # equal differences: no t-test exists
    assert "**Does dropout help?** No test can decide" in text and "zero variance" in text


def test_batchnorm_answers_follow_the_numbers_over_seeds(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")
    n = len(runs.read_json(folder / "batchnorm" / "result.json")["seeds"])
    assert n >= 2

    def bn(e_bn, e_plain, a_bn, a_plain):
        return _per_seed(
            folder,
            "batchnorm",
            {
                "batchnorm": {"epochs_to_target": e_bn, "test_acc": a_bn},
                "plain": {"epochs_to_target": e_plain, "test_acc": a_plain},
            },
        )

    hi = [0.99 - 0.001 * i for i in range(n)]
    lo = [0.97 - 0.003 * i for i in range(n)]
    fast, slow = [1 + i % 2 for i in range(n)], [6 + i for i in range(n)]
    text = bn(fast, slow, hi, lo)
    assert "**Batch norm — converges faster?** Yes: epochs to 98 % validation accuracy" in text
    assert "**Better model?** Yes: test precision" in text
    text = bn(slow, fast, lo, hi)
    assert "converges faster?** No:" in text and "**Better model?** No:" in text
    never = bn([None] * n, fast, hi, hi)  # never reached the target: never called faster
    assert "converges faster?** No:" in never and "never vs" in never
    assert "**Better model?** No test can decide" in never


def test_transfer_verdicts_follow_the_seeds(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")
    t = folder / "transfer"

    def accs(variant, values, val=None):
        def change(r):
            for s, v in zip(r["seeds"], values, strict=True):
                s["test_acc"] = v
            r["summary"]["test_acc"] = [sum(values) / len(values), 0.01]
            if val is not None:
                r["summary"]["val_acc"] = [val, 0.0]

        _edit(t / f"{variant}.json", change)

    for v in ("frozen5", "cached5", "reuse4"):
        accs(v, [0.70, 0.71, 0.72], val=0.5)
    accs("unfreeze2", [0.80, 0.81, 0.82], val=0.9)
    accs("scratch", [0.90, 0.91, 0.92])
    assert "Transfer did NOT help here" in _text(sections.digits(folder)[1])
    accs("scratch", [0.60, 0.61, 0.62])
    assert "Transfer helped" in _text(sections.digits(folder)[1])
    accs("scratch", [0.70, 0.95, 0.70])
    text = _text(sections.digits(folder)[1])
    assert "Whether transfer helps is not shown" in text and "(not significant" in text


def test_transfer_prose_takes_its_figures_from_the_config(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")
    text = _text(sections.digits(folder))
    assert "20 per digit" in text and "100 per digit" not in text  # the tiny run's setting
    _edit(folder / "config.json", lambda c: c["config"].update(unfreeze_lr_factor=0.5))
    assert "a 2× smaller learning rate" in _text(sections.digits(folder)[1])
    _edit(folder / "config.json", lambda c: c["config"].update(unfreeze_lr_factor=1.0))
    assert "the same learning rate" in _text(sections.digits(folder)[1])


def test_published_numbers_come_from_the_data_file():
    pub = sections.published()
    assert pub["stn_tutorial"]["test_acc_after_20_epochs"] == 98.26
    assert pub["stn_paper"]["error"]["ST-CNN (affine)"]["E"] == 1.2
    assert pub["geron_digits"]["transfer"]["scratch"] == [84.8, 84.8]
    for module in Path(sections.__file__).parent.glob("*.py"):
        src = module.read_text()
        for number in ("98.26", "84.8", "68.6", "1.4"):  # no published number written in prose
            assert number not in src, module.name


# ----------------------------------------------------------------------------- in a browser


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")
def test_report_renders_in_headless_chromium_at_desktop_and_phone_width(results, tmp_path):
    from playwright.sync_api import sync_playwright

    html_path, _ = build_report(results, tmp_path)
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        for width, height in ((1280, 900), (390, 844)):
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            loaded = page.evaluate(
                "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
            )
            overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            assert page.title() == "mnistlab report"
            assert loaded and all(loaded)
            assert not overflow, f"the page scrolls sideways at {width}px"
            page.screenshot(path=str(tmp_path / f"report-{width}.png"), full_page=False)
        browser.close()
    assert errors == []


# ----------------------------------------------------------------------------- best protocols


def test_fewshot_best_difference_and_target_follow_the_seeds(results, tmp_path):
    folder = _copy(results, tmp_path, "fewshot-best")

    def seeds(best, adam):
        def change(m):
            row = m["backbones"]["resnet18"]["table"][0]
            row["per_seed_test_acc"], row["per_seed_adam_test_acc"] = best, adam
            row["test_acc"] = [sum(best) / len(best), 0.01]

        _edit(folder / "metrics.json", change)
        return sections.fewshot_best(folder).tables[0].rows[0]

    up = seeds([0.95, 0.96, 0.955], [0.90, 0.91, 0.904])
    assert up[3].startswith("+5.03 points (significant at 5 %")
    down = seeds([0.60, 0.61, 0.604], [0.65, 0.66, 0.655])
    assert down[3].startswith("−5.03 points (significant")
    tie = seeds([0.9, 0.8, 0.7], [0.8, 0.9, 0.7])
    assert "(no verdict" not in tie[3] and "not significant" in tie[3]


def test_digits_best_verdicts_follow_the_numbers(results, tmp_path):
    folder = _copy(results, tmp_path, "digits-best")
    specified = results / runs.read_json(results / runs.MANIFEST)["folders"]["digits"]
    tuned = runs.read_json(specified / "tune" / "result.json")
    n = tuned["test_n"]

    def source(precision, right):
        def change(m):
            m["source"]["best"]["test_precision"] = precision
            m["source"]["best"]["test_correct"] = pack_correct(right)

        _edit(folder / "metrics.json", change)
        return _text(sections.digits_best(folder, specified))

    tuned_right = unpack_correct(tuned["test_correct"], n)
    text = source(0.999, np.ones(n, bool))
    assert "target met" in text
    assert "the searched recipe is better than the tuned model" in text or tuned_right.all()
    text = source(0.5, np.zeros(n, bool))
    assert "target missed" in text and "the searched recipe is worse than the tuned model" in text
    text = source(0.99, tuned_right)
    assert "measured exactly level" in text and "agree on every image" in text


def test_digits_best_source_contrast_follows_the_numbers(results, tmp_path):
    """Whether source accuracy and target validation order the sources alike is read from
    the numbers, both ways."""
    folder = _copy(results, tmp_path, "digits-best")

    def contrast(searched_acc, searched_val):
        def change(m):
            chosen = next(s for s in m["sources"] if s != "searched")
            for v in ("frozen5", "reuse4"):
                m["transfer"][v]["chosen"]["source"] = chosen
                m["transfer"][v]["source_val_acc"] = {
                    **dict.fromkeys(m["sources"], 0.5),
                    "searched": searched_val,
                    chosen: 0.8,
                }
            m["sources"]["searched"]["source_test_acc"] = [searched_acc] * 2
            m["sources"][chosen]["source_test_acc"] = [0.98] * 2

        _edit(folder / "metrics.json", change)
        return _text(sections.digits_best(folder))

    assert "the orders disagree" in contrast(0.99, 0.7)
    assert "the two orders agree" in contrast(0.99, 0.9)
    assert "the two orders agree" in contrast(0.97, 0.7)


# ----------------------------------------------------------------------------- schemas


def test_every_result_file_conforms_to_the_schema_its_readers_use(results):
    """Each study's metrics.json (and each digits part's file) from the tiny real runs
    against the typed schema the registry names; a removed field is caught."""
    from mnistlab import registry, schemas

    folders = runs.read_json(results / runs.MANIFEST)["folders"]
    for study in registry.STUDIES.values():
        metrics = runs.read_json(results / folders[study.name] / "metrics.json")
        assert schemas.problems(metrics, study.schema) == [], study.name
    digits_folder = results / folders["digits"]
    for name, schema in schemas.DIGITS_FILES.items():
        assert schemas.problems(runs.read_json(digits_folder / name), schema) == [], name
    stn = runs.read_json(results / folders["stn"] / "metrics.json")
    del stn["models"]["stn"]["per_seed_primary"]
    stn["models"]["baseline"]["primary"]["all"] = [0.9]
    assert sorted(schemas.problems(stn, schemas.STNTutorialMetrics)) == [
        "$.models.baseline.primary.all: expected 2 items, got 1",
        "$.models.stn.per_seed_primary: missing",
    ]
