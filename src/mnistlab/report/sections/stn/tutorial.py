"""The section of the ``stn`` study (the tutorial's STN on MNIST): the questions answered
first, then the evidence — every seed's deformations, the θ ablations, the tutorial's own run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnistlab.report.sections.common import (
    Section,
    against_range,
    fig,
    opening,
    pm,
    published,
)
from mnistlab.report.sections.stn.common import (
    ablation_table,
    ablation_tests,
    adaptivity_line,
    score_rule,
    seed_table,
    verdict,
)
from mnistlab.report.verdict import answer, compare


def stn(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("stn", folder)
    if m is None:
        return sec
    a, c = m["models"], verdict(m, "all")
    t = ablation_tests(m, "all")
    used = learned_in_seeds(m["deformations_by_seed"])
    sec.paragraphs += [
        f"**Is the STN more accurate than the same CNN on MNIST?** {answer(c)} — "
        f"{compare(c, 'the STN', 'the CNN')}: STN {pm(a['stn']['primary']['all'])}, CNN "
        f"{pm(a['baseline']['primary']['all'])}.",
        f"**Which deformations did it learn?** "
        f"{used_summary(used, len(m['deformations_by_seed']))}",
        f"**Does it adapt per image?** {answer(t['kind_mean'])} — the image's own θ against "
        "the mean θ of all test images (the θ ablations below).",
    ]
    sec.paragraphs.append(score_rule(m, cfg))
    sec.paragraphs.append(_tutorial_line(m))
    sec.paragraphs.append(
        f"Padding: {m['padding']}. The tutorial normalises first, so its zero padding is about "
        f"−0.42 instead of the background ({published()['stn_tutorial']['issue']})."
    )
    sec.bullets += deformation_bullets(used, m["deformations_by_seed"])
    sec.bullets.append(adaptivity_line("all", t))
    sec.tables += [seed_table(m), ablation_table(m)]
    sec.figures += fig(
        folder,
        "accuracy_curves",
        "Train (dashed) and test accuracy per epoch: every seed thin, the mean bold",
    )
    sec.figures += fig(folder, "theta_by_seed", "The same test images through every seed's STN")
    sec.figures += fig(
        folder, "theta_hist", "Distribution of θ components on the test set (first seed)"
    )
    sec.figures += fig(
        folder,
        "theta_examples",
        "Test images with the largest rotation, zoom, "
        "shear and translation (first seed): input | STN output",
    )
    return sec


def _tutorial_line(m: dict[str, Any]) -> str:
    """This run's first and last epoch beside what the tutorial page printed."""
    tut = published()["stn_tutorial"]
    curves = m["models"]["stn"]["curves_by_seed"]["test_acc"]
    first = 100 * float(np.mean([c[0] for c in curves]))
    last = 100 * m["models"]["stn"]["final"]["all"][0]
    e1, e20 = tut["test_acc_after_1_epoch"], tut["test_acc_after_20_epochs"]
    note = "" if m["models"]["stn"]["epochs"] == tut["epochs"] else " (this run is shorter)"
    return (
        f"Beside the tutorial page's own printed run ({tut['source']}, one run): after one "
        f"epoch {against_range(first, e1, e1, 'its one-epoch')}; after the last epoch"
        f"{note} {against_range(last, e20, e20, 'its last-epoch')} (its best epoch "
        f"{tut['best_test_acc']:g} % at epoch {tut['best_epoch']}). Mean over seeds."
    )


def learned_in_seeds(per_seed: list[dict[str, Any]]) -> dict[str, int]:
    """Per deformation type: in how many seeds the STN uses it (90th percentile over the
    threshold)."""
    return {name: sum(s[name]["learned"] for s in per_seed) for name in per_seed[0]}


def used_summary(used: dict[str, int], n: int) -> str:
    every = [k for k, v in used.items() if v == n]
    some = [f"{k} ({v} of {n})" for k, v in used.items() if 0 < v < n]
    text = f"Used by every seed: {', '.join(every) or 'none'}."
    return text + (f" By some seeds: {', '.join(some)}." if some else "")


_UNIT = {"rotation": "°"}


def deformation_bullets(used: dict[str, int], per_seed: list[dict[str, Any]]) -> list[str]:
    """One line per deformation type: in how many seeds it is used, its size across seeds."""
    lines = []
    for name, k in used.items():
        unit = _UNIT.get(name, "")
        p90 = [s[name]["p90"] for s in per_seed]
        line = (
            f"{name}: used in {k} of {len(per_seed)} seeds — 90th-percentile |deviation| "
            f"{min(p90):.3g}–{max(p90):.3g}{unit} across seeds (threshold "
            f"{per_seed[0][name]['threshold']:g}{unit})"
        )
        if name == "zoom":
            scales = [s[name]["mean_scale"] for s in per_seed]
            line += f"; mean θ scale {min(scales):.3f}–{max(scales):.3f} (below 1 magnifies)"
        lines.append(line)
    return lines


# ------------------------------------------------------------------ study 2: + deformations
