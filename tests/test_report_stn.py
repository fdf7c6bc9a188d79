"""The spatial-transformer sections, built from the real tiny runs' result files; every answer
and verdict is checked to flip when the numbers it rests on flip (the numbers are edited in a
copy of the real results folder, re-written with its digest)."""

import pytest

from mnistlab import runs
from mnistlab.report import sections
from mnistlab.stats import mean_ci

from .conftest import copy_study, edit_json, section_text


def _seeds(folder, study, kind, stn_scores, cnn_scores):
    """Give both models these per-seed primary scores on ``kind`` (and the config that many
    seeds, every other per-seed list resized to match)."""
    n = len(stn_scores)
    edit_json(folder / "config.json", lambda c: c["config"].update(seeds=n))

    def change(m):
        for model, scores in (("stn", stn_scores), ("baseline", cnn_scores)):
            r = m["models"][model]
            for key in ("per_seed_primary", "per_seed_final", "per_seed_train_primary"):
                for k, v in r[key].items():
                    r[key][k] = (
                        list(scores) if (key == "per_seed_primary" and k == kind) else [v[0]] * n
                    )
            r["primary"][kind] = list(mean_ci(scores))
            r["seeds"] = list(range(n))
            r["test_correct_by_seed"] = [r["test_correct_by_seed"][0]] * n
        for v in m["ablation"]["per_seed"].values():
            for k in v:
                v[k] = [v[k][0]] * n
        for col, per_seed in m["theta_by_seed"].items():
            m["theta_by_seed"][col] = [per_seed[0]] * n
        if "magnification" in m:
            m["magnification"]["per_seed"] = [m["magnification"]["per_seed"][0]] * n
        if "deformations_by_seed" in m:
            m["deformations_by_seed"] = [m["deformations_by_seed"][0]] * n

    edit_json(folder / "metrics.json", change)


def test_stn_answer_and_verdict_follow_the_primary_score(results, tmp_path):
    folder = copy_study(results, tmp_path, "stn")

    def text(stn_acc, cnn_acc):
        _seeds(folder, "stn", "all", stn_acc, cnn_acc)
        return section_text(sections.stn(folder))

    better = text([0.99, 0.98, 0.985], [0.95, 0.94, 0.946])
    assert (
        "**Is the STN more accurate than the same CNN on MNIST?** Yes — the STN is better than "
        "the CNN by 3.97 points (significant at 5 %: p = " in better
    )
    worse = text([0.95, 0.94, 0.946], [0.99, 0.98, 0.985])
    assert "MNIST?** No — the STN is worse than the CNN by 3.97 points (significant" in worse
    noisy = text([0.99, 0.92], [0.95, 0.95])
    assert "Not shown at 5 % — the STN measured 0.50 points higher than the CNN (not sig" in noisy
    assert "better" not in noisy.split("**Which")[0]
    level = text([0.99, 0.98], [0.95, 0.94])  # two equal differences: no t-test exists
    assert "all 2 paired differences are equal (zero variance)" in level
    one = text([0.99], [0.95])
    assert "over 1 seed: no significance test possible" in one


def test_tutorial_comparison_names_the_page_and_follows_the_numbers(results, tmp_path):
    folder = copy_study(results, tmp_path, "stn")

    def final(acc):
        edit_json(
            folder / "metrics.json",
            lambda m: m["models"]["stn"]["final"].__setitem__("all", [acc, 0.0]),
        )
        return section_text(sections.stn(folder))

    assert "points above its last-epoch (98.26 %)" in final(0.995)
    assert "98.26 % is within its last-epoch (98.26 %)" in final(0.9826)
    assert "points below its last-epoch" in final(0.90)
    assert "the run printed on the tutorial page" in final(0.90)
    assert "93–94.5" not in final(0.90)


def _mag(folder, per_seed):
    edit_json(folder / "metrics.json", lambda m: m["magnification"].update(per_seed=per_seed))
    return section_text(sections.stn_deform(folder))


def test_zoom_out_answer_follows_every_seeds_magnification(results, tmp_path):
    folder = copy_study(results, tmp_path, "stn-deform")
    _seeds(folder, "stn-deform", "zoom", [0.8, 0.81, 0.82], [0.85, 0.86, 0.855])
    partly = _mag(folder, [2.4, 2.6, 2.5])
    assert "zoom-out?** Partly: it magnifies zoomed-out test digits 2.50× relative to " in partly
    assert "less than a full undo (p = " in partly
    full = _mag(folder, [3.8, 4.3, 3.9])
    assert "zoom-out?** Yes: it magnifies" in full and "A full undo is not ruled out" in full
    none = _mag(folder, [1.0, 1.02, 0.97])
    assert "zoom-out?** Not shown:" in none and "against no zoom" in none
    # and the accuracy question on zoomed-out digits, by the paired test of the primary score
    assert "**Does it help on zoomed-out digits?** No — the STN is worse than the CNN" in none
    _seeds(folder, "stn-deform", "zoom", [0.9, 0.91, 0.907], [0.85, 0.86, 0.855])
    assert "zoomed-out digits?** Yes — the STN is better" in section_text(
        sections.stn_deform(folder)
    )


def _ablate(folder, kind, own, mean, cnn=None):
    def change(m):
        ab = m["ablation"]["per_seed"]
        ab["stn"][kind], ab["kind_mean"][kind] = own, mean
        ab["shuffled"][kind] = mean
        if cnn is not None:
            m["models"]["baseline"]["per_seed_primary"][kind] = cnn

    edit_json(folder / "metrics.json", change)
    return section_text(sections.stn_deform(folder))


def test_per_image_adaptation_is_tested_not_asserted(results, tmp_path):
    folder = copy_study(results, tmp_path, "stn-deform")
    _seeds(folder, "stn-deform", "elastic", [0.95, 0.96, 0.955], [0.92, 0.93, 0.925])
    adaptive = _ablate(folder, "elastic", [0.95, 0.96, 0.955], [0.90, 0.91, 0.902])
    line = next(s for s in adaptive.splitlines() if s.startswith("On elastic test images"))
    assert "Against its kind's mean θ: its own θ is better than the mean θ" in line
    assert "So the transformer adapts to each image" in line
    glob = _ablate(
        folder, "elastic", [0.95, 0.96, 0.955], [0.949, 0.961, 0.954], [0.92, 0.93, 0.925]
    )
    line = next(s for s in glob.splitlines() if s.startswith("On elastic test images"))
    assert "So no per-image adaptation is shown: one global warp per kind does as well" in line
    assert "With the kind's mean θ alone the STN still beats the CNN" in line
    # the sentences the numbers never supported are gone
    assert "resampling cannot restore" not in glob and "global corrections" not in glob


def test_per_seed_mcnemar_is_a_table_not_a_paragraph(results, tmp_path):
    folder = copy_study(results, tmp_path, "stn-deform")
    sec = sections.stn_deform(folder)
    assert not any("McNemar" in p for p in sec.paragraphs)
    (table,) = [t for t in sec.tables if t.caption.startswith("Per seed")]
    m = runs.read_json(folder / "metrics.json")
    assert len(table.rows) == len(m["models"]["stn"]["seeds"]) * 4  # all + 3 kinds
    assert all("McNemar" in row[-1] for row in table.rows)


@pytest.mark.parametrize("study", ["stn", "stn-deform"])
def test_stn_sections_show_every_seed(results, tmp_path, study):
    folder = copy_study(results, tmp_path, study)
    sec = getattr(sections, study.replace("-", "_"))(folder)
    captions = " ".join(c for _, c in sec.figures)
    assert "every seed thin, the mean bold" in captions
    assert "every seed's" in captions


# ----------------------------------------------------------------------------- stn-paper


def test_paper_verdicts_follow_the_paired_test_and_say_when_the_transformer_collapsed(
    results, tmp_path
):
    """'Reproduced' only where this run's own test says the ST-CNN is better; a θ that is the
    same for every image is named a fixed warp. Both flip with the numbers."""
    from mnistlab.report.sections.stn.paper import stn_paper

    folder = copy_study(results, tmp_path, "stn-paper")

    def errors(st, cnn, spread):
        def change(m):
            m["results"]["R"]["st-cnn"]["per_seed_test_error"] = st
            m["results"]["R"]["cnn"]["per_seed_test_error"] = cnn
            m["theta"]["R"]["theta_sd_by_seed"] = spread

        edit_json(folder / "metrics.json", change)
        return section_text(stn_paper(folder))

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


def test_paper_search_table_says_when_a_choice_sits_on_the_grids_edge(results, tmp_path):
    """An lr at the end of its grid means the search may have stopped short: the table says
    so, and only then."""
    from mnistlab.report.sections.stn.paper import stn_paper

    folder = copy_study(results, tmp_path, "stn-paper")

    def choose(lr):
        def change(m):
            m["search"]["lr_grid"] = [0.005, 0.01, 0.02]
            for r in m["results"].values():
                for model in r.values():
                    model["chosen"]["lr"] = lr

        edit_json(folder / "metrics.json", change)
        return section_text(stn_paper(folder))

    n = 2 * len(runs.read_json(folder / "metrics.json")["distortions"])
    assert f"{n} of {n} lr choices sit on the grid's edge" in choose(0.02)
    assert "grid's edge" not in choose(0.01)
