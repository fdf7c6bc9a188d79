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

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STUDY_CONFIGS = registry.profile_configs(
    "tiny", device="cpu", with_=registry.OPT_IN
)  # both protocols and the opt-in studies, run order


@pytest.fixture(scope="session")
def results(tmp_path_factory, mnist):
    """A results root written by the real studies, both protocols (about a minute on 2 cores)."""
    root = tmp_path_factory.mktemp("results")
    folders = {}
    for study, cfg in STUDY_CONFIGS.items():
        folder = runs.run_dir(root, study, cfg)
        registry.get(study).run(cfg, folder)
        folders[study] = str(folder.relative_to(root))
    runs.write_json(
        root / runs.MANIFEST,
        {
            "profile": "quick",
            "command": "pytest",
            "finished": "now",
            "folders": folders,
            "wall_seconds": {},
        },
    )
    return root


def _copy(results, tmp_path, study):
    """A private copy of one study's folder to edit."""
    src = results / runs.read_json(results / runs.MANIFEST)["folders"][study]
    dst = tmp_path / study
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _edit(path: Path, change):
    obj = runs.read_json(path)
    change(obj)
    runs.write_json(path, obj)


def _text(sec_or_list):
    secs = sec_or_list if isinstance(sec_or_list, list) else [sec_or_list]
    return "\n".join(
        line for s in secs for line in [*s.paragraphs, *s.bullets] + [t.caption for t in s.tables]
    )


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
    assert html_path.read_text().count("Not available") == 7


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


def test_stn_verdict_and_significance_follow_the_seeds(results, tmp_path):
    folder = _copy(results, tmp_path, "stn")

    def seeds(stn_acc, cnn_acc):
        def change(m):
            m["stn"]["per_seed_final"], m["baseline"]["per_seed_final"] = stn_acc, cnn_acc

        _edit(folder / "metrics.json", change)
        return _text(sections.stn(folder))

    better = seeds([0.99, 0.98, 0.985], [0.95, 0.94, 0.946])
    assert "The STN is better than the CNN by 3.97 points (significant at 5 %: p = " in better
    worse = seeds([0.95, 0.94, 0.946], [0.99, 0.98, 0.985])
    assert "The STN is worse than the CNN by 3.97 points (significant" in worse
    noisy = seeds([0.99, 0.92], [0.95, 0.95])
    assert "The STN measured 0.50 points higher than the CNN (not significant at 5 %" in noisy
    assert "better" not in noisy
    level = seeds([0.99, 0.98], [0.95, 0.94])  # two equal differences: no t-test exists
    assert "all 2 paired differences are equal (zero variance)" in level
    assert "better" not in level and "p = 0" not in level
    one = seeds([0.99], [0.95])
    assert "over 1 seed: no significance test possible" in one and "better" not in one


def test_tutorial_comparison_follows_the_numbers(results, tmp_path):
    folder = _copy(results, tmp_path, "stn")

    def final(acc):
        _edit(folder / "metrics.json", lambda m: m["stn"]["final_test_acc"].__setitem__(0, acc))
        return _text(sections.stn(folder))

    assert "points above the tutorial after 20" in final(0.995)
    assert "within the tutorial after 20" in final(0.987)
    assert "points below the tutorial after 20" in final(0.90)


def _deform(results, tmp_path):
    folder = _copy(results, tmp_path, "stn-deform")
    m = runs.read_json(folder / "metrics.json")
    n = sum(m["test_kind_counts"])
    return folder, n


def _set_correct(folder, n, stn_right, cnn_right, kind_slice, seed=None):
    """Which images of ``kind_slice`` each model gets right (every seed, or one)."""

    def change(m):
        for model, right in (("stn", stn_right), ("baseline", cnn_right)):
            packed = m["test_correct_by_seed"][model]
            for i in range(len(packed)) if seed is None else [seed]:
                bits = unpack_correct(packed[i], n).copy()
                bits[kind_slice] = right
                packed[i] = pack_correct(bits)

    _edit(folder / "metrics.json", change)


def test_deform_verdict_over_seeds_is_checked_seed_by_seed(results, tmp_path):
    """Three seeds: the paired test over seeds decides; each seed's McNemar says whether the
    runs agree with it (the sentence follows both, never a verdict the tests do not carry)."""
    folder, n = _deform(results, tmp_path)
    third = n // 3
    zoom = slice(2 * third, n)
    _edit(folder / "config.json", lambda c: c["config"].update(seeds=3))

    def seeds(stn_zoom, cnn_zoom):
        def change(m):
            for model, acc in (("stn", stn_zoom), ("baseline", cnn_zoom)):
                for kind, values in m["per_seed_final_test_acc"][model].items():
                    m["per_seed_final_test_acc"][model][kind] = (
                        list(acc) if kind == "zoom" else [values[0]] * 3
                    )
                m["test_correct_by_seed"][model] = [m["test_correct_by_seed"][model][0]] * 3

        _edit(folder / "metrics.json", change)

    seeds([0.90, 0.92, 0.91], [0.80, 0.81, 0.83])
    _set_correct(folder, n, np.ones(third, bool), np.zeros(third, bool), zoom)
    text = _text(sections.stn_deform(folder))
    assert "Zoom: Seed by seed — seed 0: +" in text
    assert "the verdict held in every seed's own test" in text
    _set_correct(folder, n, np.zeros(third, bool), np.ones(third, bool), zoom, seed=2)
    assert "the verdict held in 2 of 3 seeds' own tests" in _text(sections.stn_deform(folder))
    seeds([0.90, 0.80, 0.91], [0.85, 0.86, 0.84])  # the mean ahead, the seeds disagree
    _set_correct(folder, n, np.zeros(third, bool), np.ones(third, bool), zoom, seed=1)
    text = _text(sections.stn_deform(folder))
    assert "no verdict over seeds; the STN measured ahead in 2 of 3 seeds" in text
    assert "significantly ahead in its own test in 2 and significantly behind in 1" in text


def test_zoom_verdicts_follow_scale_and_accuracy(results, tmp_path):
    folder, n = _deform(results, tmp_path)
    third = n // 3
    zoom = slice(2 * third, n)

    def scales(zoom_scale):
        _edit(
            folder / "metrics.json",
            lambda m: m["mean_scale_by_kind"].update(original=1.0, elastic=1.0, zoom=zoom_scale),
        )

    scales(0.25)
    _set_correct(folder, n, np.ones(third, bool), np.zeros(third, bool), zoom)
    text = _text(sections.stn_deform(folder))
    assert "undid the zoom-out (almost) fully" in text and "paid off" in text
    assert "did not pay off" not in text
    _set_correct(folder, n, np.zeros(third, bool), np.ones(third, bool), zoom)
    text = _text(sections.stn_deform(folder))
    assert "did not pay off" in text and "contrary to the expectation" in text
    assert "about 5×5 pixels" in text  # from the zoom factor (4×), not a fixed figure
    scales(1.0)
    text = _text(sections.stn_deform(folder))
    assert "did not undo the zoom-out" in text and "did not pay off" not in text
    assert "magnifies them 1.00×, where a full undo of the 4× zoom-out would need 4×" in text


def test_elastic_verdict_follows_the_measured_difference(results, tmp_path):
    folder, n = _deform(results, tmp_path)
    third = n // 3
    elastic = slice(third, 2 * third)
    _set_correct(folder, n, np.ones(third, bool), np.zeros(third, bool), elastic)
    assert "significantly better on elastic" in _text(sections.stn_deform(folder))
    _set_correct(folder, n, np.zeros(third, bool), np.ones(third, bool), elastic)
    assert "significantly worse on elastic" in _text(sections.stn_deform(folder))
    same = np.arange(third) % 2 == 0
    _set_correct(folder, n, same, same, elastic)
    text = _text(sections.stn_deform(folder))
    assert "no test could compare the models on elastic images" in text
    assert "agree on every image" in text
    other = same.copy()
    other[:2] = ~other[:2]  # one image each way: a tie the test cannot call
    _set_correct(folder, n, same, other, elastic)
    assert "no significant difference between the models on elastic" in _text(
        sections.stn_deform(folder)
    )


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


def test_dropout_is_chosen_on_validation_not_test(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")

    def rates(val, prec):
        def change(r):
            for (rate, v), p in zip(r["rates"].items(), prec, strict=True):
                v["val_acc_at_best"], v["test_precision"] = val[rate], p

        _edit(folder / "dropout" / "result.json", change)
        return _text(sections.digits(folder)[0])

    # the best test precision belongs to 0.5, but validation prefers 0.2: 0.2 is reported
    text = rates({"0.0": 0.95, "0.2": 0.97, "0.5": 0.96}, [0.95, 0.94, 0.99])
    assert "validation chose dropout 0.2" in text
    text = rates({"0.0": 0.99, "0.2": 0.97, "0.5": 0.96}, [0.95, 0.94, 0.99])
    assert "Does dropout help? Not on validation" in text


def _set_models_correct(path, a, b, a_right, b_right):
    """Which test images the models ``a`` and ``b`` of a part-1 result got right."""

    def change(r):
        for key, right in ((a, a_right), (b, b_right)):
            node = r
            for part in key:
                node = node[part]
            n = node["test_n"]
            node["test_correct"] = pack_correct(np.resize(np.asarray(right, bool), n))

    _edit(path, change)


def test_dropout_answer_follows_its_test(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")
    path = folder / "dropout" / "result.json"
    rates = runs.read_json(path)["rates"]
    chosen = max(rates, key=lambda k: (rates[k]["val_acc_at_best"], -float(k)))
    if chosen == "0.0":  # make validation choose a rate, so that the test decides
        _edit(path, lambda r: r["rates"][list(r["rates"])[1]].update(val_acc_at_best=1.0))
        chosen = list(rates)[1]
    n = rates["0.0"]["test_n"]
    right, wrong = np.ones(n, bool), np.r_[np.zeros(200, bool), np.ones(n - 200, bool)]
    pair = (("rates", chosen), ("rates", "0.0"))
    _set_models_correct(path, *pair, right, wrong)
    assert "Does dropout help? Yes" in _text(sections.digits(folder)[0])
    _set_models_correct(path, *pair, wrong, right)
    assert "Does dropout help? No:" in _text(sections.digits(folder)[0])
    _set_models_correct(path, *pair, right, right)
    text = _text(sections.digits(folder)[0])
    assert "Does dropout help? No test can decide" in text and "agree on every image" in text


def test_batchnorm_answers_follow_the_numbers(results, tmp_path):
    folder = _copy(results, tmp_path, "digits")

    def bn(e_bn, e_plain, p_bn, p_plain):
        def change(r):
            r["batchnorm"]["epochs_to_target"], r["plain"]["epochs_to_target"] = e_bn, e_plain
            r["batchnorm"]["test_precision"], r["plain"]["test_precision"] = p_bn, p_plain

        _edit(folder / "batchnorm" / "result.json", change)
        return _text(sections.digits(folder)[0])

    assert "Converges faster? Yes, judged by the epochs each needed" in bn(1, 3, 0.99, 0.98)
    assert "Converges faster? No, judged by the epochs" in bn(3, 1, 0.98, 0.99)
    assert "Converges faster? the same number of epochs" in bn(2, 2, 0.98, 0.98)
    path = folder / "batchnorm" / "result.json"
    n = runs.read_json(path)["plain"]["test_n"]
    right, wrong = np.ones(n, bool), np.r_[np.zeros(200, bool), np.ones(n - 200, bool)]
    pair = (("batchnorm",), ("plain",))
    _set_models_correct(path, *pair, right, wrong)
    assert "Better model? Yes: on test accuracy the model with batch" in _text(
        sections.digits(folder)[0]
    )
    _set_models_correct(path, *pair, wrong, right)
    assert "Better model? No: on test accuracy" in _text(sections.digits(folder)[0])
    nearly = right.copy()
    nearly[:3] = False
    _set_models_correct(path, *pair, nearly, right)
    text = _text(sections.digits(folder)[0])
    assert "Better model? Not shown at 5 %: on test accuracy the model with batch norm " in text
    assert "measured 0." in text and "lower than the one without (not significant" in text


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
    assert pub["stn_tutorial"]["test_acc_after_20_epochs"] == [98.5, 99.0]
    assert pub["stn_paper"]["error"]["ST-CNN (affine)"]["E"] == 1.2
    assert pub["geron_digits"]["transfer"]["scratch"] == [84.8, 84.8]
    for module in Path(sections.__file__).parent.glob("*.py"):
        src = module.read_text()
        for number in ("98.5", "84.8", "68.6", "1.4"):  # no published number written in prose
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
    del stn["stn"]["per_seed_final"]
    stn["baseline"]["final_test_acc"] = [0.9]
    assert schemas.problems(stn, schemas.STNMetrics) == [
        "$.stn.per_seed_final: missing",
        "$.baseline.final_test_acc: expected 2 items, got 1",
    ]


# ----------------------------------------------------------------------------- stn-paper


def test_paper_verdicts_follow_the_paired_test_and_say_when_the_transformer_collapsed(
    results, tmp_path
):
    """'Reproduced' only where this run's own test says the ST-CNN is better; a θ that is the
    same for every image is named a fixed warp. Both flip with the numbers."""
    from mnistlab.report.sections.stn_paper import stn_paper

    folder = _copy(results, tmp_path, "stn-paper")

    def errors(st, cnn, spread):
        def change(m):
            m["results"]["R"]["st-cnn"]["per_seed_test_error"] = st
            m["results"]["R"]["cnn"]["per_seed_test_error"] = cnn
            m["theta"]["R"]["theta_sd_by_seed"] = spread

        _edit(folder / "metrics.json", change)
        return _text(stn_paper(folder))

    text = errors([0.020, 0.021], [0.050, 0.052], [0.2, 0.3])
    (r_line,) = [line for line in text.splitlines() if line.startswith("R: the ST-CNN")]
    assert r_line.startswith("R: the ST-CNN is more accurate than the CNN by 3.05 points")
    assert "the paper's gain is reproduced" in r_line
    assert "R: in" not in text  # no collapse sentence for R
    text = errors([0.050, 0.052], [0.020, 0.021], [0.0, 0.3])
    (r_line,) = [line for line in text.splitlines() if line.startswith("R: the ST-CNN")]
    assert r_line.startswith("R: the ST-CNN is less accurate than the CNN")
    assert "the paper's gain is **not** reproduced" in r_line
    assert "R: in 1 of 2 seeds the localisation network outputs the same θ" in text
