"""Sections of the spatial-transformer studies: plain MNIST, and MNIST with elastic and
zoom-out copies (what the STN learned, and whether it undoes the deformations)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mnistlab.report.sections.common import (
    Section,
    Table,
    against_range,
    count,
    fig,
    opening,
    pct,
    pm,
    published,
)
from mnistlab.report.verdict import across_seeds, compare
from mnistlab.stats import NOT_SIGNIFICANT, Comparison, compare_correct, paired


def stn(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("stn", folder)
    if m is None:
        return sec
    s, b = m["stn"], m["baseline"]
    c = paired(s["per_seed_final"], b["per_seed_final"])
    sec.paragraphs.append(
        f"Final test accuracy after {count(s['epochs'], 'epoch')} ({cfg['optimizer'].upper()}, "
        f"lr {cfg['lr']:g}, batch {cfg['batch_size']}, {count(len(s['per_seed_final']), 'seed')}"
        f", {m['n_test']} test images): STN {pm(s['final_test_acc'])}, the same CNN without it "
        f"{pm(b['final_test_acc'])}. {compare(c, 'The STN', 'the CNN')}. Best-epoch accuracy: STN "
        f"{pm(s['best_test_acc'])}, CNN {pm(b['best_test_acc'])}."
    )
    tut = published()["stn_tutorial"]
    first = 100 * s["curves"]["test_acc"][0]
    final = 100 * s["final_test_acc"][0]
    epochs_note = (
        "" if s["epochs"] == tut["epochs"] else f" (this run trained {s['epochs']} epochs)"
    )
    sec.paragraphs.append(
        f"Against public runs of the PyTorch tutorial ({tut['source']}): after one epoch "
        f"{against_range(first, *tut['test_acc_after_1_epoch'], 'the tutorial after one')}; "
        f"at the end "
        f"{against_range(final, *tut['test_acc_after_20_epochs'], 'the tutorial after 20')}"
        f"{epochs_note}."
    )
    sec.paragraphs.append(
        f"Padding: {m['padding']}. The tutorial normalises first, so its zero padding is about "
        f"−0.42 instead of the background ({tut['issue']})."
    )
    sec.paragraphs.append(
        "Deformations the STN applies to the test images (θ decomposed into rotation · shear "
        "· scale, plus translation; a type counts as used when its 90th-percentile deviation "
        "from identity exceeds the threshold):"
    )
    sec.bullets += describe_deformations(m["deformations"])
    sec.figures += fig(folder, "accuracy_curves", "Train (dashed) and test accuracy per epoch")
    sec.figures += fig(folder, "theta_hist", "Distribution of θ components on the test set")
    sec.figures += fig(
        folder,
        "theta_examples",
        "Test images with the largest rotation, zoom, shear and translation: input | STN output",
    )
    return sec


_UNIT = {"rotation": "°"}


def describe_deformations(stats: dict[str, dict[str, float]]) -> list[str]:
    """One line per deformation type: used or not (from the stored θ statistics), magnitudes.

    θ maps output to input coordinates, so a mean θ scale s < 1 magnifies (zoom-in by 1/s)
    and s > 1 shrinks the digit (zoom-out by s)."""
    lines = []
    for name, s in stats.items():
        unit = _UNIT.get(name, "")
        verdict = "used" if s["learned"] else "not used"
        line = (
            f"{name}: {verdict} — median |deviation| {s['median']:.3g}{unit}, "
            f"90th percentile {s['p90']:.3g}{unit} (threshold {s['threshold']:g})"
        )
        if name == "zoom":
            scale = s["mean_scale"]
            kind = f"zoom-in of {1 / scale:.2f}×" if scale < 1 else f"zoom-out of {scale:.2f}×"
            line += f"; mean θ scale {scale:.3f}, on average a {kind}"
        if name == "rotation" and "mean_signed_deg" in s:
            mean = s["mean_signed_deg"]
            line += f"; mean signed angle {mean:+.1f}°"
            if abs(mean) > 0.7 * s["median"]:  # nearly every image turned the same way
                line += " (mostly one constant offset rather than per-image corrections)"
        lines.append(line)
    return lines


def stn_deform(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("stn-deform", folder)
    if m is None:
        return sec
    zoom, sigma = m["zoom_factor"], m["sigma"]
    sec.paragraphs.append(
        f"Training set grown {m['n_train'] // 3:,} → {m['n_train']:,} (test {m['n_test'] // 3:,} "
        f"→ {m['n_test']:,}): every image, one elastic copy (elasticdeform's random 3×3 grid, "
        f"σ = {sigma:g} px) and one {zoom:g}× zoom-out copy. STN and the same CNN without it, "
        f"{count(cfg['epochs'], 'epoch')}, {count(cfg['seeds'], 'seed')}; accuracy per kind of "
        "image."
        + (
            " θ statistics and example warps are the first seed's STN's."
            if cfg["seeds"] > 1
            else ""
        )
    )
    acc = {
        model: {k: v[0] for k, v in m["final_test_acc"][model].items()}
        for model in ("stn", "baseline")
    }
    verdicts = deform_comparisons(m)
    sec.bullets += explain_deform(m["mean_scale_by_kind"], acc, zoom, verdicts)
    if cfg["seeds"] > 1:
        for kind, tests in per_kind_seed_tests(m).items():
            sec.bullets.append(f"{kind.capitalize()}: {across_seeds(verdicts[kind], tests)}")
    rows = []
    one = cfg["seeds"] == 1  # no interval from one seed: print the value alone
    for model in ("stn", "baseline"):
        te, tr = m["final_test_acc"][model], m["final_train_acc"][model]
        for kind in ("all", *m["kinds"]):
            rows.append([model, kind, *(pct(x[kind][0]) if one else pm(x[kind]) for x in (tr, te))])
    sec.tables.append(
        Table(
            ["model", "kind", "train acc (final, eval mode)", "test acc (final)"],
            rows,
            "accuracy after the last epoch"
            + (" (one seed)" if one else ", mean ± 95 % CI over seeds"),
        )
    )
    sec.tables.append(
        Table(
            ["kind", "mean θ scale √|det A|"],
            [[k, f"{v:.3f}"] for k, v in m["mean_scale_by_kind"].items()],
            f"1.0 = no zoom; {1 / zoom:.3g} would undo a {zoom:g}× zoom-out",
        )
    )
    sec.tables.append(_paper_table(m))
    sec.figures += fig(folder, "accuracy_curves", "Train (dashed) / test accuracy per kind")
    sec.figures += fig(
        folder,
        "deform_examples",
        "Zoomed-out, elastic and original test images: input | STN output",
    )
    sec.figures += fig(folder, "scale_by_kind", "θ scale per input kind")
    return sec


def deform_comparisons(m: dict) -> dict[str, Comparison]:
    """STN − CNN final test accuracy per kind: paired t-test over seeds when there are several,
    McNemar on the one seed's models otherwise."""
    per_seed = m["per_seed_final_test_acc"]
    out = {}
    for kind, by_seed in per_kind_seed_tests(m).items():
        if len(per_seed["stn"][kind]) >= 2:
            out[kind] = paired(per_seed["stn"][kind], per_seed["baseline"][kind])
        else:
            out[kind] = by_seed[0]
    return out


def per_kind_seed_tests(m: dict) -> dict[str, list[Comparison]]:
    """Per kind, McNemar of STN vs CNN for each seed on that kind's test images."""
    counts = m["test_kind_counts"]
    n = sum(counts)
    bounds = np.cumsum([0, *counts])
    tc = m["test_correct_by_seed"]
    out = {}
    for i, kind in enumerate(m["kinds"]):  # the order of the expanded test set
        mask = np.zeros(n, dtype=bool)
        mask[bounds[i] : bounds[i + 1]] = True
        out[kind] = [
            compare_correct(a, b, n, mask) for a, b in zip(tc["stn"], tc["baseline"], strict=True)
        ]
    return out


def explain_deform(
    scale: dict[str, float],
    acc: dict[str, dict[str, float]],
    zoom: float,
    tests: dict[str, Comparison],
) -> list[str]:
    """Findings generated from the measured scales, accuracies and their tests."""
    undone, zoom_line = _zoom_undone(scale, zoom)
    lines = [zoom_line]
    stn, base = acc["stn"], acc["baseline"]
    for kind in ("zoom", "elastic", "original"):
        lines.append(
            f"Accuracy on {kind} test images: {100 * stn[kind]:.2f} % with the STN vs "
            f"{100 * base[kind]:.2f} % without — {compare(tests[kind], 'the STN', 'the CNN')}."
        )
    zc = tests["zoom"]
    if undone >= 0.1 and zc.significant and zc.diff < 0:
        px = 20 / zoom  # an MNIST digit fills about a 20×20 box
        lines.append(
            "Magnifying the zoomed-out digits did not pay off: on them the STN is significantly "
            "less accurate than the same CNN without it — contrary to the expectation that a "
            "transformer helps most on the deformation it learned to undo (plausibly because a "
            f"digit shrunk {zoom:g}× to about {px:.0f}×{px:.0f} pixels has lost detail that "
            "resampling cannot restore)."
        )
    elif undone >= 0.1 and zc.significant and zc.diff > 0:
        lines.append(
            "Undoing part of the zoom-out paid off: the STN is significantly more accurate on "
            "the zoomed-out digits, as expected of a transformer that learned the deformation."
        )
    lines.append(_elastic_line(tests["elastic"], scale))
    return lines


def _zoom_undone(scale: dict[str, float], zoom: float) -> tuple[float, str]:
    """How much of the zoom-out the STN undoes (share on a log scale) and the sentence."""
    s_o, s_z = scale["original"], scale["zoom"]
    rel = s_z / s_o if s_o else math.nan
    undone = math.log(rel) / math.log(1 / zoom) if rel > 0 and zoom > 1 else 0.0
    if undone >= 0.9:
        verdict = "undid the zoom-out (almost) fully"
    elif undone >= 0.5:
        verdict = "undid much of the zoom-out"
    elif undone >= 0.1:
        verdict = "undid part of the zoom-out"
    else:
        verdict = "did not undo the zoom-out"
    return undone, (
        f"Zoom-out: the STN {verdict}. Its mean θ scale is {s_z:.3f} on zoomed-out test images "
        f"vs {s_o:.3f} on originals: relative to originals it magnifies them {1 / rel:.2f}×, "
        f"where a full undo of the {zoom:g}× zoom-out would need {zoom:g}× "
        f"({100 * max(0.0, undone):.0f} % of the way, on a log scale)."
    )


def _elastic_line(ec: Comparison, scale: dict[str, float]) -> str:
    s_e, s_o = scale["elastic"], scale["original"]
    if ec.significant and ec.diff > 0:
        return (
            f"Elastic: the STN is significantly better on elastic images. An affine map cannot "
            f"undo a local random-grid warp, so the gain must come from global corrections: its "
            f"mean θ scale on elastic images is {s_e:.3f} (originals {s_o:.3f})."
        )
    if ec.significant and ec.diff < 0:
        return (
            "Elastic: the STN is significantly worse on elastic images; an affine map cannot "
            "undo a local random-grid warp, and the transformer's resampling costs detail."
        )
    if ec.status != NOT_SIGNIFICANT:  # nothing the test could decide: no explanation either
        return f"Elastic: no test could compare the models on elastic images ({ec.evidence()})."
    return (
        "Elastic: no significant difference between the models on elastic images (mean θ "
        f"scale on elastic images {s_e:.3f}, originals {s_o:.3f}); an affine map cannot undo a "
        "local random-grid warp, so no gain was to be expected from undoing it."
    )


def _paper_table(m: dict) -> Table:
    pub = published()["stn_paper"]
    err = {k: 100 * (1 - m["final_test_acc"][k]["elastic"][0]) for k in ("stn", "baseline")}
    rows = [
        ["paper: CNN", *(f"{v:g}" for v in pub["error"]["CNN"].values()), "—"],
        [
            "paper: ST-CNN (affine)",
            *(f"{v:g}" for v in pub["error"]["ST-CNN (affine)"].values()),
            "—",
        ],
        ["this run: CNN", "—", "—", "—", f"{err['baseline']:.2f}", "—"],
        ["this run: STN", "—", "—", "—", f"{err['stn']:.2f}", "—"],
    ]
    rows[0][-1] = rows[1][-1] = "their distortions"
    rows[2][-1] = rows[3][-1] = f"elastic σ = {m['sigma']:g} px"
    return Table(
        ["model", "R", "RTS", "P", "E (elastic)", "note"],
        rows,
        f"% test error. Published: {pub['source']}. {pub['note']}",
    )
