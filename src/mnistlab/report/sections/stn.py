"""Sections of the tutorial-STN studies: plain MNIST, and MNIST with elastic and zoom-out
copies. Each opens with the questions answered in plain words, then the evidence.

Every verdict rests on the pre-registered primary score (per seed and kind, the mean test
accuracy over the last scored epochs; README, "How the STN verdicts are decided") and its
paired t-test over seeds; the last epoch's accuracy and each seed's McNemar test on its final
model are kept as descriptions, in tables. Explanations come only from measurements: the θ
ablations (the image's own θ against the identity, the kind's mean θ and a shuffled θ) and
the θ scales recorded over the scored epochs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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
from mnistlab.report.verdict import answer, compare, signed
from mnistlab.stats import Comparison, compare_correct, mean_ci, one_sample, paired

MODELS = ("stn", "baseline")
NAMES = {"stn": "STN", "baseline": "CNN"}


def verdict(m: dict[str, Any], kind: str) -> Comparison:
    """STN − CNN on ``kind``: the paired t-test over seeds of the primary score."""
    a = m["models"]
    return paired(a["stn"]["per_seed_primary"][kind], a["baseline"]["per_seed_primary"][kind])


def _score_rule(m: dict[str, Any], cfg: dict[str, Any]) -> str:
    n, seeds = m["score_epochs"], cfg["seeds"]
    return (
        f"Score: per seed, the mean test accuracy over the last {count(n, 'epoch')} "
        f'(fixed before the runs: README, "How the STN verdicts are decided"); verdicts: '
        f"paired t-test over {count(seeds, 'seed')} (seed s gives both models the same batch "
        f"order). {cfg['optimizer'].upper()}, lr {cfg['lr']:g}, batch {cfg['batch_size']}, "
        f"{count(cfg['epochs'], 'epoch')}, {m['n_test']:,} test images."
    )


# ------------------------------------------------------------------ θ ablations


def ablation_tests(m: dict[str, Any], kind: str) -> dict[str, Comparison]:
    """Per kind: the STN with its own θ against each ablation, and the kind's mean θ against
    the CNN (does a gain survive one global warp per kind?)."""
    ab = m["ablation"]["per_seed"]
    own = ab["stn"][kind]
    out = {v: paired(own, ab[v][kind]) for v in ("identity", "kind_mean", "shuffled")}
    out["global_vs_cnn"] = paired(
        ab["kind_mean"][kind], m["models"]["baseline"]["per_seed_primary"][kind]
    )
    return out


def adaptivity_line(kind: str, t: dict[str, Comparison]) -> str:
    """What the ablations say about ``kind``: does the warp matter, is it per image? (One
    sentence per test, so that no direction word shares a sentence with another's p-value.)"""
    label = "all test images" if kind == "all" else f"{kind} test images"
    own, glob = t["kind_mean"], t["global_vs_cnn"]
    if own.significant and own.diff > 0:
        why = "So the transformer adapts to each image: one warp per kind does not do as well."
    elif own.status == "not significant":
        why = "So no per-image adaptation is shown: one global warp per kind does as well here."
    else:
        why = "So per-image adaptation is not shown."
    line = (
        f"On {label}, the STN's own θ against no warp (θ = identity): "
        f"{compare(t['identity'], 'its own θ', 'no warp')}. Against its kind's mean θ: "
        f"{compare(own, 'its own θ', 'the mean θ')}. Against another image's θ of the same "
        f"kind: {compare(t['shuffled'], 'its own θ', 'a shuffled θ')}. {why}"
    )
    if glob.significant:
        side = "still beats" if glob.diff > 0 else "falls behind"
        line += f" With the kind's mean θ alone the STN {side} the CNN ({signed(glob)})."
    return line


def _ablation_table(m: dict[str, Any]) -> Table:
    ab = m["ablation"]["per_seed"]
    cnn = m["models"]["baseline"]["per_seed_primary"]
    rows = []
    for kind in m["kinds"]:
        cells = [pm(mean_ci(ab[v][kind])) for v in ("stn", "identity", "kind_mean", "shuffled")]
        rows.append([kind, *cells, pm(mean_ci(cnn[kind]))])
    epochs = m["ablation"]["epochs"]
    return Table(
        ["kind", "own θ", "identity (no warp)", "kind's mean θ", "shuffled θ", "CNN"],
        rows,
        f"θ ablations: test accuracy of the trained STNs with θ replaced, averaged over epochs "
        f"{epochs[0]}–{epochs[-1]} (the scored epochs), mean ± 95 % CI over seeds",
    )


# ------------------------------------------------------------------ per seed


def _mcnemar(m: dict[str, Any], kind: str, k: int) -> Comparison:
    tc = [m["models"][x]["test_correct_by_seed"][k] for x in MODELS]
    if kind == "all":
        return compare_correct(*tc, m["n_test"])
    counts = m["test_kind_counts"]
    j = m["kinds"].index(kind) - 1  # kinds: all, then the test set's order
    lo = sum(counts[:j])
    mask = np.zeros(sum(counts), dtype=bool)
    mask[lo : lo + counts[j]] = True
    return compare_correct(*tc, sum(counts), mask)


def seed_table(m: dict[str, Any]) -> Table:
    """Every seed and kind: both scores of both models and the final models' McNemar."""
    a = m["models"]
    rows = []
    for k, seed in enumerate(a["stn"]["seeds"]):
        for kind in m["kinds"]:
            p = [a[x]["per_seed_primary"][kind][k] for x in MODELS]
            f = [a[x]["per_seed_final"][kind][k] for x in MODELS]
            rows.append(
                [
                    str(seed),
                    kind,
                    pct(p[0]),
                    pct(p[1]),
                    f"{100 * (p[0] - p[1]):+.2f}",
                    pct(f[0]),
                    pct(f[1]),
                    signed(_mcnemar(m, kind, k)),
                ]
            )
    n = m["score_epochs"]
    return Table(
        [
            "seed",
            "kind",
            f"STN (last {n})",
            f"CNN (last {n})",
            "STN − CNN (points)",
            "STN (last epoch)",
            "CNN (last epoch)",
            "last epoch, McNemar on this seed's models",
        ],
        rows,
        f"Per seed: the primary score (mean of the last {n} epochs) and, as a description only, "
        "the last epoch and McNemar's test of that epoch's two models on the same images",
    )


# ------------------------------------------------------------------ study 1: MNIST


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
    sec.paragraphs.append(_score_rule(m, cfg))
    sec.paragraphs.append(_tutorial_line(m))
    sec.paragraphs.append(
        f"Padding: {m['padding']}. The tutorial normalises first, so its zero padding is about "
        f"−0.42 instead of the background ({published()['stn_tutorial']['issue']})."
    )
    sec.bullets += deformation_bullets(used, m["deformations_by_seed"])
    sec.bullets.append(adaptivity_line("all", t))
    sec.tables += [seed_table(m), _ablation_table(m)]
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
        + (f" (95 % CI ± {half:.2f})" if half else "")
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
        f"σ = {m['sigma']:g} px) and one {m['zoom_factor']:g}× zoom-out copy. "
        + _score_rule(m, cfg)
    )
    sec.bullets += [
        adaptivity_line(k, ablation_tests(m, k)) for k in ("zoom", "elastic", "original")
    ]
    sec.tables += [
        _accuracy_table(m),
        seed_table(m),
        theta_table(m),
        _ablation_table(m),
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
