"""The section of the ``stn-deform`` study (MNIST with elastic and zoom-out copies): has the
STN learned to undo the zoom-out (every seed's θ), does it help on each kind (the primary
score), is it a per-image warp (the θ ablations)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab.report.sections.common import (
    Section,
    Table,
    fig,
    opening,
    pm,
    published,
)
from mnistlab.report.sections.stn.common import (
    MODELS,
    NAMES,
    ablation_table,
    ablation_tests,
    adaptivity_line,
    score_rule,
    seed_table,
    verdict,
)
from mnistlab.report.verdict import answer, compare
from mnistlab.stats import Comparison, mean_ci, one_sample


def zoom_tests(m: dict[str, Any]) -> tuple[list[float], Comparison, Comparison]:
    """Per-seed magnification of zoomed-out digits relative to originals (scored epochs), and
    one-sample t-tests of its log against no zoom (log 1) and a full undo (log Z)."""
    mag = m["magnification"]["per_seed"]
    logs = [math.log(x) for x in mag]
    return mag, one_sample(logs, 0.0), one_sample(logs, math.log(m["magnification"]["full_undo"]))


def zoom_answer(m: dict[str, Any]) -> str:
    mag, vs_none, vs_full = zoom_tests(m)
    z = m["magnification"]["full_undo"]
    mean, half = mean_ci(mag)
    share = math.log(mean) / math.log(z) if mean > 0 and z > 1 else 0.0
    size = (
        f"it magnifies zoomed-out test digits {mean:.2f}× relative to originals"
        + (f" (95 % CI {mean - half:.2f}–{mean + half:.2f}×)" if half else "")
        + f", {100 * max(0.0, share):.0f} % of the way (log scale) to the {z:g}× a full undo needs"
    )
    if vs_none.significant and vs_none.diff > 0:
        if vs_full.significant and vs_full.diff < 0:
            return f"Partly: {size}; less than a full undo ({vs_full.evidence()})."
        return f"Yes: {size}. A full undo is not ruled out ({vs_full.evidence()})."
    return f"Not shown: {size} ({vs_none.evidence()} against no zoom)."


def stn_deform(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("stn-deform", folder)
    if m is None:
        return sec
    a = m["models"]
    tests = {k: verdict(m, k) for k in m["kinds"]}
    sec.paragraphs.append(  # one paragraph per question: no verdict shares another's sentence
        f"**Has the STN learned to undo the {m['zoom_factor']:g}× zoom-out?** {zoom_answer(m)}"
    )
    for kind, what in (("zoom", "zoomed-out"), ("elastic", "elastic"), ("original", "original")):
        c = tests[kind]
        sec.paragraphs.append(
            f"**Does it help on {what} digits?** {answer(c)} — {compare(c, 'the STN', 'the CNN')}: "
            f"STN {pm(a['stn']['primary'][kind])}, CNN {pm(a['baseline']['primary'][kind])}."
        )
    sec.paragraphs.append(
        f"Training set grown {m['n_train'] // 3:,} → {m['n_train']:,} (test {m['n_test'] // 3:,} "
        f"→ {m['n_test']:,}): every image, one elastic copy (elasticdeform's random 3×3 grid, "
        f"σ = {m['sigma']:g} px) and one {m['zoom_factor']:g}× zoom-out copy. " + score_rule(m, cfg)
    )
    sec.bullets += [
        adaptivity_line(k, ablation_tests(m, k)) for k in ("zoom", "elastic", "original")
    ]
    sec.tables += [
        _accuracy_table(m),
        seed_table(m),
        theta_table(m),
        ablation_table(m),
        _paper_table(m),
    ]
    sec.figures += fig(
        folder,
        "accuracy_curves",
        "Train (dashed) / test accuracy per kind: every seed thin, the mean bold",
    )
    sec.figures += fig(
        folder,
        "deform_examples",
        "Zoomed-out, elastic and original test images "
        "through every seed's final STN: input | output",
    )
    sec.figures += fig(folder, "scale_by_kind", "θ scale per input kind (first seed)")
    return sec


def _accuracy_table(m: dict[str, Any]) -> Table:
    rows = []
    for model in MODELS:
        r = m["models"][model]
        for kind in m["kinds"]:
            rows.append(
                [
                    NAMES[model],
                    kind,
                    pm(r["train_primary"][kind]),
                    pm(r["primary"][kind]),
                    pm(r["final"][kind]),
                ]
            )
    n = m["score_epochs"]
    return Table(
        [
            "model",
            "kind",
            f"train acc (last {n}, eval mode)",
            f"test acc (last {n})",
            "test acc (last epoch)",
        ],
        rows,
        "Accuracy per kind, mean ± 95 % CI over seeds",
    )


def theta_table(m: dict[str, Any]) -> Table:
    """Per seed: θ scale per kind and its spread over images, over the scored epochs."""
    th, n = m["theta_by_seed"], m["score_epochs"]
    rows = []
    for k, seed in enumerate(m["models"]["stn"]["seeds"]):
        row = [str(seed), f"{m['magnification']['per_seed'][k]:.2f}×"]
        for kind in m["kinds"][1:]:
            scale = float(np.mean(th[f"theta_scale_{kind}"][k][-n:]))
            sd = float(np.mean(th[f"theta_scale_sd_{kind}"][k][-n:]))
            row.append(f"{scale:.3f} (sd {sd:.3f} over images)")
        rows.append(row)
    return Table(
        [
            "seed",
            "zoom vs original magnification",
            *(f"θ scale on {k}" for k in m["kinds"][1:]),
        ],
        rows,
        f"θ of every seed's STN on fixed test images ({', '.join(m['kinds'][1:])}), averaged "
        f"over the last {n} epochs; a full undo of the {m['zoom_factor']:g}× zoom-out is "
        f"{m['zoom_factor']:g}×",
    )


def _paper_table(m: dict[str, Any]) -> Table:
    pub = published()["stn_paper"]
    err = {k: 100 * (1 - m["models"][k]["primary"]["elastic"][0]) for k in MODELS}
    rows = [
        ["paper: CNN", *(f"{v:g}" for v in pub["error"]["CNN"].values()), "their distortions"],
        [
            "paper: ST-CNN (affine)",
            *(f"{v:g}" for v in pub["error"]["ST-CNN (affine)"].values()),
            "their distortions",
        ],
        [
            "this run: CNN",
            "—",
            "—",
            "—",
            f"{err['baseline']:.2f}",
            f"elastic σ = {m['sigma']:g} px",
        ],
        ["this run: STN", "—", "—", "—", f"{err['stn']:.2f}", f"elastic σ = {m['sigma']:g} px"],
    ]
    return Table(
        ["model", "R", "RTS", "P", "E (elastic)", "note"],
        rows,
        f"% test error. Published: {pub['source']}. {pub['note']}",
    )
