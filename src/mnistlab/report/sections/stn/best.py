"""The section of ``stn-best``: the same STN trained with the recipe validation chose, beside
the tutorial recipe's (``stn-deform``: same seeds, same data) — "can an STN learn to undo the
zoom-out?" beside "did the tutorial's one?". Every comparison pairs the two runs seed by seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypedDict

from mnistlab import runs
from mnistlab.report.sections.common import Section, Table, fig, opening, pm
from mnistlab.report.sections.stn.common import ablation_table, ablation_tests, adaptivity_line
from mnistlab.report.sections.stn.deform import zoom_answer
from mnistlab.report.verdict import answer, compare, signed
from mnistlab.stats import paired

STUDY = "stn-best"


class STNBestMetrics(TypedDict):
    """What ``studies/stn/best.py`` writes and this section reads (its registry schema)."""

    kinds: list[str]
    score_epochs: int
    search: dict[str, Any]  # grid (recipe, validation score), chosen, n_fit, n_val
    recipe: dict[str, Any]
    model: dict[str, Any]  # the chosen recipe's STN, as stn-deform's models
    magnification: dict[str, Any]
    ablation: dict[str, Any]
    zoom_factor: float


def _paired_with(m: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any] | None:
    """The as-specified study's metrics when its seeds are this run's (else no pairing)."""
    if base is None or base["models"]["stn"]["seeds"] != m["model"]["seeds"]:
        return None
    return base


def _recipe_text(r: dict[str, Any]) -> str:
    loc = "" if r["loc_scale"] == 1 else f", localisation step × {r['loc_scale']:g}"
    return f"{r['optimizer'].upper()} lr {r['lr']:g}, {r['schedule']} schedule{loc}"


def _search_table(m: dict[str, Any]) -> Table:
    found = m["search"]
    rows = [
        [row["recipe"], f"{100 * row['val_score']:.2f} %", "chosen" if row["recipe"] ==
         found["chosen"] else ""]
        for row in found["grid"]
    ]  # fmt: skip
    return Table(
        ["recipe", "validation accuracy (mean of the last epochs)", ""],
        rows,
        f"The search: each recipe trained on {found['n_fit']:,} training images (digits with "
        f"their copies) and scored on {found['n_val']:,} held-out ones (the last digits of the "
        "training set with their copies); the test set is not read",
    )


def _against(m: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Per kind: the chosen recipe's STN against the tutorial recipe's and against the CNN;
    and the zoom-out magnification, paired by seed (log scale)."""
    ours = m["model"]["per_seed_primary"]
    lines = []
    for kind in ("zoom", "elastic", "original"):
        tut = paired(ours[kind], base["models"]["stn"]["per_seed_primary"][kind])
        cnn = paired(ours[kind], base["models"]["baseline"]["per_seed_primary"][kind])
        lines.append(
            f"{kind.capitalize()} test images: {pm(m['model']['primary'][kind])} — against the "
            f"tutorial recipe's STN {signed(tut)}; against stn-deform's CNN (trained with the "
            f"tutorial's recipe, not with this one) {signed(cnn)}."
        )
    mag = paired(
        [math.log(x) for x in m["magnification"]["per_seed"]],
        [math.log(x) for x in base["magnification"]["per_seed"]],
    )
    lines.append(
        "Zoom-out magnification, log scale, against the tutorial recipe's: "
        f"{compare(mag, 'the chosen recipe', 'the tutorial recipe', scale=1, unit='log unit')}."
    )
    return lines


def stn_best(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening(STUDY, folder)
    if m is None:
        return sec
    ok = baseline is not None and runs.is_complete(baseline)
    base = _paired_with(m, runs.read_json(baseline / "metrics.json") if ok else None)
    sec.paragraphs.append(
        f"**Can a spatial transformer learn to undo the {m['zoom_factor']:g}× zoom-out?** "
        f"{zoom_answer(m)}"
    )
    if base is not None:
        tut = paired(
            [math.log(x) for x in m["magnification"]["per_seed"]],
            [math.log(x) for x in base["magnification"]["per_seed"]],
        )
        mine, theirs = (
            sum(x) / len(x)
            for x in (m["magnification"]["per_seed"], base["magnification"]["per_seed"])
        )
        sec.paragraphs.append(
            f"**Does it undo more of it than the tutorial's recipe?** {answer(tut)} — "
            f"{mine:.2f}× against {theirs:.2f}× with the tutorial's recipe (the log of the "
            f"magnification, paired by seed: {signed(tut, scale=1, unit='log unit')})."
        )
    sec.paragraphs.append(
        f"Recipe chosen on validation: **{m['search']['chosen']}** ({_recipe_text(m['recipe'])}); "
        f"then {cfg['seeds']} seeds on all {m['n_train']:,} training images for "
        f"{cfg['epochs']} epochs, scored as stn-deform (mean test accuracy of the last "
        f"{m['score_epochs']} epochs, per kind)."
    )
    if base is None:
        sec.paragraphs.append(
            "No finished stn-deform run with the same seeds: nothing to pair this run with."
        )
    else:
        sec.bullets += _against(m, base)
        merged = {**m, "models": {"stn": m["model"], "baseline": base["models"]["baseline"]}}
        sec.bullets += [adaptivity_line(k, ablation_tests(merged, k)) for k in ("zoom", "elastic")]
        sec.tables.append(ablation_table(merged))
    sec.tables.append(_search_table(m))
    sec.figures += fig(
        folder, "accuracy_curves", "Train (dashed) / test accuracy per kind: every seed thin, "
        "the mean bold"
    )  # fmt: skip
    sec.figures += fig(folder, "deform_examples", "Test images through every seed's final STN "
                       "(the chosen recipe): input | output")  # fmt: skip
    return sec
