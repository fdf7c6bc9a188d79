"""One function per study: its result files on disk → a :class:`Section` of generated prose,
figures and tables.

Every number is read from the study's verified result files and its ``config.json``; every
verdict (better, worse, significant, undone, helped) is computed from those numbers with the
test named beside it, so it flips when they flip. Where a measurement contradicts the textbook
expectation, the sentence says so. Published numbers come from ``published.json`` with their
sources, never from this file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab import runs
from mnistlab.stats import Comparison, compare_correct, paired

PUBLISHED = Path(__file__).with_name("published.json")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    missing: str | None = None  # why the section has no results


def published() -> dict[str, Any]:
    return json.loads(PUBLISHED.read_text(encoding="utf-8"))


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f} %"


def pm(pair: list | tuple, scale: float = 100, digits: int = 2, unit: str = " %") -> str:
    """``[mean, ci]`` → ``"m ± ci %"``."""
    return f"{scale * pair[0]:.{digits}f} ± {scale * pair[1]:.{digits}f}{unit}"


def points(x: float) -> str:
    return f"{abs(100 * x):.2f} point{'s' if abs(100 * x) != 1 else ''}"


def _fig(folder: Path, stem: str, caption: str) -> list[tuple[Path, str]]:
    path = folder / f"{stem}.png"
    return [(path, caption)] if path.is_file() else []


def _config(folder: Path) -> dict[str, Any]:
    return runs.read_json(folder / "config.json")["config"]


def versus(c: Comparison, a: str, b: str, higher: str = "better", lower: str = "worse") -> str:
    """``STN is better than CNN by 0.27 points (p = …: not significant at 5 %)``."""
    if c.diff == 0:
        return f"{a} and {b} are exactly level ({c.evidence()})"
    return f"{a} is {c.word(higher, lower)} than {b} by {points(c.diff)} ({c.evidence()})"


def _span(lo: float, hi: float) -> str:
    return f"{lo:g} %" if lo == hi else f"{lo:g}–{hi:g} %"


def against_range(value: float, lo: float, hi: float, what: str) -> str:
    """Where ``value`` (%) sits relative to a published range [lo, hi] (%)."""
    if value > hi:
        return f"{value:.2f} % is {value - hi:.2f} points above {what} ({_span(lo, hi)})"
    if value < lo:
        return f"{value:.2f} % is {lo - value:.2f} points below {what} ({_span(lo, hi)})"
    return f"{value:.2f} % is within {what} ({_span(lo, hi)})"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------------- fewshot


def fewshot(folder: Path | None) -> Section:
    sec = Section("fewshot", "1. Few-shot ImageNet transfer")
    if folder is None:
        sec.missing = "no finished few-shot run found (mnistlab run fewshot)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    cfg = _config(folder)
    near = m.get("near_best", 0.005)
    sec.paragraphs.append(
        f"Output layer replaced by a fresh 10-way linear layer, everything else frozen (eval "
        f"mode); MNIST scaled up bilinearly to {cfg['image_size']}×{cfg['image_size']}, grey "
        f"repeated to 3 channels, ImageNet normalisation. Adam, lr {cfg['lr']:g}, batch "
        f"{cfg['batch_size']}, {cfg['epochs']} epochs; {cfg['seeds']} seeds, each a different "
        f"balanced draw (nested across sizes); test accuracy after every epoch. Sizes: "
        f"{', '.join(map(str, cfg['sizes']))} images per class."
    )
    rows = []
    for name, r in m["backbones"].items():
        _fewshot_backbone(sec, name, r, cfg, near)
        for row in r["table"]:
            rows.append(
                [
                    name + (" (random)" if r["random_weights"] else ""),
                    str(row["size"]),
                    pm(row["best_test_acc"]),
                    pm(row["lowest_test_error"]),
                    pm(row["epochs_to_best"], 1, 1, ""),
                    pm(row["epochs_to_near_best"], 1, 1, ""),
                    pm(row["val_epoch_same_lr_test_acc"]),
                    pm(row["val_selected_test_acc"]),
                ]
            )
    for name, reason in m.get("skipped", {}).items():
        sec.bullets.append(f"{name} SKIPPED: {reason}")
    sec.tables.append(
        Table(
            [
                "backbone",
                "images/class",
                "best test acc",
                "lowest test error",
                "epochs to best",
                f"epochs to within {100 * near:g} pt",
                f"test acc, epoch chosen on val (lr {cfg['lr']:g})",
                "test acc, lr and epoch chosen on val",
            ],
            rows,
            f"mean ± 95 % CI over {cfg['seeds']} seeds",
        )
    )
    sec.tables += _fewshot_published(m)
    sec.figures += _fig(folder, "error_vs_size", "Lowest test error vs training-set size")
    sec.figures += _fig(folder, "epochs_vs_size", "Epochs to best test accuracy vs size")
    for name in m["backbones"]:
        sec.figures += _fig(folder, f"curves_{name}", f"{name}: test accuracy per epoch")
    return sec


def _fewshot_backbone(sec: Section, name: str, r: dict, cfg: dict, near: float) -> None:
    tag = " — RANDOM WEIGHTS, not ImageNet" if r["random_weights"] else ""
    first, last = r["table"][0], r["table"][-1]
    sec.paragraphs.append(
        f"{name}{tag}: the lowest test error is {pm(first['lowest_test_error'])} with "
        f"{first['size']} images per class and {pm(last['lowest_test_error'])} with "
        f"{last['size']}. Weights: {r['weights_source']}; features in {r['precision']} on "
        f"{r['device']}; {r['n_test']} test images."
    )
    e_best = [row["epochs_to_best"][0] for row in r["table"]]
    e_near = [row["epochs_to_near_best"][0] for row in r["table"]]
    plateau = sum(e_near) / len(e_near) < 0.5 * sum(e_best) / len(e_best)
    sec.paragraphs.append(
        f"{name}: the best test accuracy came after {e_best[0]:.0f} epochs on average at "
        f"{first['size']} per class and {e_best[-1]:.0f} at {last['size']}; the first epoch "
        f"within {100 * near:g} point of it after {e_near[0]:.0f} and {e_near[-1]:.0f}. "
        + (
            "Training was effectively done long before the best epoch: the exact best epoch "
            "lies on a plateau, and its position says little."
            if plateau
            else "The best epoch and the first near-best epoch are close: accuracy was still "
            "rising when it peaked."
        )
    )
    best = [v for row in r["table"] for v in row["per_seed_best_test_acc"]]
    honest = [v for row in r["table"] for v in row["per_seed_val_epoch_same_lr_test_acc"]]
    c = paired(best, honest, "(seed, size) pairs")
    effect = (
        f"raises the reported test accuracy by {points(c.diff)}"
        if c.diff > 0
        else "does not change the reported test accuracy"
    )
    grid = [
        row["val_selected_test_acc"][0] - row["val_epoch_same_lr_test_acc"][0] for row in r["table"]
    ]
    g = sum(grid) / len(grid)
    candidates = count(len({cfg["lr"], *cfg["lr_grid"]}), "candidate")
    lr_effect = (
        f"choosing the learning rate on validation as well (from {candidates}) "
        f"{'adds' if g > 0 else 'costs'} {points(g)} on average"
        if g
        else "choosing the learning rate on validation as well changes nothing on average"
    )
    sec.paragraphs.append(
        f"{name}: choosing the epoch on the test set instead of on a {cfg['val_per_class']}-"
        f"per-class validation split (same lr {cfg['lr']:g}) {effect} ({c.evidence()}); "
        f"{lr_effect}."
    )


def _fewshot_published(m: dict) -> list[Table]:
    pub = published()["fewshot_student"]
    rows = []
    for name, r in m["backbones"].items():
        theirs = pub["test_acc"].get(name, {})
        for row in r["table"]:
            if str(row["size"]) in theirs:
                ours, ref = 100 * row["best_test_acc"][0], theirs[str(row["size"])]
                rows.append(
                    [name, str(row["size"]), f"{ref:.1f} %", f"{ours:.2f} %", f"{ours - ref:+.2f}"]
                )
    if not rows:
        return []
    return [
        Table(
            ["backbone", "images/class", "published", "this run", "difference (points)"],
            rows,
            f"Published: {pub['source']}. {pub['note']}",
        )
    ]


# ----------------------------------------------------------------------------------- STN


def stn(folder: Path | None) -> Section:
    sec = Section("stn", "2. Spatial transformer network on MNIST")
    if folder is None:
        sec.missing = "no finished STN run found (mnistlab run stn)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    cfg = _config(folder)
    s, b = m["stn"], m["baseline"]
    c = paired(s["per_seed_final"], b["per_seed_final"])
    sec.paragraphs.append(
        f"Final test accuracy after {count(s['epochs'], 'epoch')} ({cfg['optimizer'].upper()}, "
        f"lr {cfg['lr']:g}, batch {cfg['batch_size']}, {count(len(s['per_seed_final']), 'seed')}"
        f", {m['n_test']} test images): STN {pm(s['final_test_acc'])}, the same CNN without it "
        f"{pm(b['final_test_acc'])}. The {versus(c, 'STN', 'the CNN')}. Best-epoch accuracy: STN "
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
    sec.figures += _fig(folder, "accuracy_curves", "Train (dashed) and test accuracy per epoch")
    sec.figures += _fig(folder, "theta_hist", "Distribution of θ components on the test set")
    sec.figures += _fig(
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


# ----------------------------------------------------------------------------------- STN deform


def stn_deform(folder: Path | None) -> Section:
    sec = Section("stn-deform", "3. STN on MNIST with elastic and zoom-out copies")
    if folder is None:
        sec.missing = "no finished STN-deform run found (mnistlab run stn-deform)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    cfg = _config(folder)
    zoom, sigma = m["zoom_factor"], m["sigma"]
    sec.paragraphs.append(
        f"Training set grown {m['n_train'] // 3:,} → {m['n_train']:,} (test {m['n_test'] // 3:,} "
        f"→ {m['n_test']:,}): every image, one elastic copy (elasticdeform's random 3×3 grid, "
        f"σ = {sigma:g} px) and one {zoom:g}× zoom-out copy. STN and the same CNN without it, "
        f"{count(cfg['epochs'], 'epoch')}, {count(cfg['seeds'], 'seed')}; accuracy per kind of "
        "image."
    )
    acc = {
        model: {k: v[0] for k, v in m["final_test_acc"][model].items()}
        for model in ("stn", "baseline")
    }
    sec.bullets += explain_deform(m["mean_scale_by_kind"], acc, zoom, deform_comparisons(m))
    rows = []
    one = cfg["seeds"] == 1  # no interval from one seed: print the value alone
    for model in ("stn", "baseline"):
        te, tr = m["final_test_acc"][model], m["final_train_acc"][model]
        for kind in ("all", "original", "elastic", "zoom"):
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
    sec.figures += _fig(folder, "accuracy_curves", "Train (dashed) / test accuracy per kind")
    sec.figures += _fig(
        folder,
        "deform_examples",
        "Zoomed-out, elastic and original test images: input | STN output",
    )
    sec.figures += _fig(folder, "scale_by_kind", "θ scale per input kind")
    return sec


def deform_comparisons(m: dict) -> dict[str, Comparison]:
    """STN − CNN final test accuracy per kind: paired t-test over seeds when there are several,
    McNemar on the first seed's models otherwise."""
    per_seed = m["per_seed_final_test_acc"]
    out = {}
    counts = m["test_kind_counts"]
    n = sum(counts)
    bounds = np.cumsum([0, *counts])
    for i, kind in enumerate(("original", "elastic", "zoom")):
        if len(per_seed["stn"][kind]) >= 2:
            out[kind] = paired(per_seed["stn"][kind], per_seed["baseline"][kind])
        else:
            mask = np.zeros(n, dtype=bool)
            mask[bounds[i] : bounds[i + 1]] = True
            tc = m["test_correct_seed0"]
            out[kind] = compare_correct(tc["stn"], tc["baseline"], n, mask)
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
            f"{100 * base[kind]:.2f} % without — the {versus(tests[kind], 'STN', 'the CNN')}."
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
    return (
        "Elastic: no significant difference between the models on elastic images, as expected "
        "of an affine transformer facing a local random-grid warp it cannot undo (mean θ scale "
        f"on elastic images {s_e:.3f}, originals {s_o:.3f})."
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


# ----------------------------------------------------------------------------------- digits


def digits(folder: Path | None) -> list[Section]:
    sec = Section("digits", "4. Digits: the 5×100 MLP, tuning, batch norm, dropout")
    sec2 = Section("transfer", "5. Transfer to new digits with few images per digit")
    if folder is None:
        sec.missing = sec2.missing = "no finished digits run found (mnistlab run digits)"
        return [sec, sec2]
    cfg = _config(folder)
    src, tgt = cfg["source_digits"], cfg["target_digits"]
    sec.title = f"4. Digits {src}: the 5×100 MLP, tuning, batch norm, dropout"
    sec2.title = f"5. Transfer {src} → {tgt} with {cfg['per_digit']} images per digit"

    def read(p: str) -> dict | None:
        return runs.read_json(folder / p) if (folder / p).is_file() else None

    pre, tune = read("pretrain/result.json"), read("tune/result.json")
    bn, do = read("batchnorm/result.json"), read("dropout/result.json")
    if pre:
        hp = pre["hyperparameters"]
        sec.paragraphs.append(
            f"Baseline 5×100 ReLU MLP on digits {src} (Xavier init, Adam lr {hp['lr']:g}, L2 "
            f"{hp['l2']:g} as Adam's coupled weight decay on weight matrices, early stopping on "
            f"validation loss): best epoch {pre['best_epoch']}, test precision "
            f"{pct(pre['test_precision'])}, accuracy {pct(pre['test_acc'])}. Checkpoints: "
            f"{', '.join(pre['checkpoints'])}."
        )
    if tune:
        bst = tune["best"]
        sec.paragraphs.append(
            f"Cross-validated tuning ({tune['folds']}-fold stratified, Optuna TPE, "
            f"{tune['n_trials']} trials of which {tune['n_pruned']} pruned): best lr "
            f"{bst['lr']:.3g}, L2 {bst['l2']:.3g}, batch {bst['batch_size']}; CV accuracy "
            f"{pct(tune['cv_mean_acc'])} ± {pct(tune['cv_sd_acc'])} (sd). Retrained on all "
            f"{src} training images for {tune['retrain_epochs']} epochs: test precision "
            f"{pct(tune['test_precision'])}, accuracy {pct(tune['test_acc'])}."
        )
    if bn:
        _batchnorm(sec, bn, folder)
    if do:
        _dropout(sec, do, folder)
    sec.tables += _geron_source(pre, tune, bn, do)
    _transfer(sec2, folder, cfg)
    if not sec2.paragraphs:
        sec2.missing = "the transfer parts have not run (mnistlab run digits --part transfer)"
    return [sec, sec2]


def _mcnemar(a: dict, b: dict) -> Comparison:
    """Two single models of part 1 on the same test images."""
    return compare_correct(a["test_correct"], b["test_correct"], a["test_n"])


def _batchnorm(sec: Section, bn: dict, folder: Path) -> None:
    p, b, target = bn["plain"], bn["batchnorm"], bn["target_val_acc"]

    def reach(r):
        e = r["epochs_to_target"]
        return f"{e} epoch(s)" if e is not None else "never"

    inf = 10**9
    eb, ep = b["epochs_to_target"] or inf, p["epochs_to_target"] or inf
    faster = "Same number of epochs." if eb == ep else "Yes." if eb < ep else "No."
    c = _mcnemar(b, p)
    diff_p = b["test_precision"] - p["test_precision"]
    better = (
        f"Yes: test precision {points(diff_p)} higher"
        if diff_p > 0
        else f"No: test precision {points(diff_p)} lower"
        if diff_p < 0
        else "Equal test precision"
    )
    sec.paragraphs.append(
        f"Batch norm: reached {pct(target, 0)} validation accuracy in {reach(b)} vs {reach(p)} "
        f"without; best validation loss at epoch {b['best_epoch']} vs {p['best_epoch']}; test "
        f"precision {pct(b['test_precision'])} vs {pct(p['test_precision'])}. Converges faster? "
        f"{faster} Better model? {better} (on accuracy, {c.evidence()}). Epochs are not free: "
        f"{b['seconds'] / max(b['epochs_run'], 1):.2f} s per epoch with batch norm vs "
        f"{p['seconds'] / max(p['epochs_run'], 1):.2f} s without."
    )
    sec.figures += _fig(
        folder / "batchnorm",
        "curves",
        "Learning curves with and without batch norm (dashed: train)",
    )


def _dropout(sec: Section, do: dict, folder: Path) -> None:
    rates = do["rates"]
    base = rates["0.0"]
    # chosen on validation (best-epoch validation accuracy; ties go to the smaller rate)
    chosen, best = max(rates.items(), key=lambda kv: (kv[1]["val_acc_at_best"], -float(kv[0])))
    sec.paragraphs.append(
        f"Overfitting: at its best epoch the tuned model without dropout has a train–validation "
        f"accuracy gap of {100 * base['gap_acc_at_best']:.2f} points (loss gap "
        f"{base['gap_loss_at_best']:.4f})."
    )
    sec.tables.append(
        Table(
            [
                "dropout",
                "train−val acc gap",
                "val−train loss gap",
                "val acc at best epoch",
                "test precision",
                "best epoch",
            ],
            [
                [
                    r,
                    pct(v["gap_acc_at_best"]),
                    f"{v['gap_loss_at_best']:.4f}",
                    pct(v["val_acc_at_best"]),
                    pct(v["test_precision"]),
                    str(v["best_epoch"]),
                ]
                for r, v in rates.items()
            ],
            "the rate is chosen on validation accuracy; test precision is reported, not used",
        )
    )
    sec.figures += _fig(folder / "dropout", "curves", "Learning curves per dropout rate")
    if chosen == "0.0":
        sec.paragraphs.append(
            "Does dropout help? No: on validation no rate beat the model without dropout, so "
            f"the chosen model is the one without (test precision {pct(base['test_precision'])})."
        )
        return
    c = _mcnemar(best, base)
    gain = best["test_precision"] - base["test_precision"]
    answer = "Yes" if gain > 0 and c.significant else "Not clearly" if gain > 0 else "No"
    sec.paragraphs.append(
        f"Does dropout help? {answer}: validation chose dropout {chosen}; its test precision is "
        f"{pct(best['test_precision'])} vs {pct(base['test_precision'])} without "
        f"({'+' if gain >= 0 else '−'}{points(gain)}; on accuracy {c.evidence()}). Its "
        f"train–validation gap is {100 * best['gap_acc_at_best']:.2f} points, and it takes "
        f"{best['best_epoch']} epochs to its best instead of {base['best_epoch']}."
    )


def _geron_source(pre, tune, bn, do) -> list[Table]:
    pub = published()["geron_digits"]["source_task"]
    rows = []
    ours = {
        "baseline": pre and pre["test_acc"],
        "tuned": tune and tune["test_acc"],
        "batch norm": bn and bn["batchnorm"]["test_acc"],
        "dropout": do
        and max(do["rates"].items(), key=lambda kv: (kv[1]["val_acc_at_best"], -float(kv[0])))[1][
            "test_acc"
        ],
    }
    for name, (lo, hi) in pub.items():
        if ours.get(name) is not None:
            v = 100 * ours[name]
            rows.append([name, _span(lo, hi), f"{v:.2f} %", against_range(v, lo, hi, "Géron")])
    if not rows:
        return []
    src = published()["geron_digits"]
    return [
        Table(
            ["model", "published (accuracy)", "this run (accuracy)", "comparison"],
            rows,
            f"Published: {src['source']}. {src['note']}",
        )
    ]


def _transfer(sec: Section, folder: Path, cfg: dict) -> None:
    t = folder / "transfer"
    order = ("scratch", "frozen5", "cached5", "reuse4", "unfreeze2")
    variants = {v: runs.read_json(t / f"{v}.json") for v in order if (t / f"{v}.json").is_file()}
    if not variants:
        return
    any_v = next(iter(variants.values()))
    sec.paragraphs.append(
        f"Transfer to digits {cfg['target_digits']} with {any_v['n_train']} training images "
        f"({cfg['per_digit']} per digit), {any_v['n_val']} validation and {any_v['n_test']} test "
        f"images; {count(len(any_v['seeds']), 'seed')}, each a different draw, the same for every "
        f"variant. Source model: {any_v['source_model']} (the tuned model without batch norm). "
        "One stopping rule for every variant: early stopping on validation loss, best weights "
        "restored."
    )
    sec.tables.append(_transfer_table(variants))
    acc = {v: [s["test_acc"] for s in r["seeds"]] for v, r in variants.items()}
    if "frozen5" in variants and "cached5" in variants:
        sec.paragraphs.append(_caching_sentence(variants["frozen5"], variants["cached5"], acc))
    if "scratch" in variants and len(variants) > 1:
        sec.paragraphs.append(_helped_sentence(variants, acc, cfg))
    if "unfreeze2" in variants:
        sec.paragraphs.append(_unfreeze_sentence(variants["unfreeze2"], acc, cfg))
    sec.tables += _geron_transfer(variants, cfg)
    sec.figures += _fig(t, "bars", "Transfer variants: test accuracy, mean ± 95 % CI")


def _transfer_table(variants: dict[str, dict]) -> Table:
    rows = []
    for r in variants.values():
        s = r["summary"]
        rows.append(
            [
                r["label"],
                pm(s["test_precision"]),
                pm(s["test_acc"]),
                f"{s['seconds'][0]:.2f} s",
                f"{s['best_epoch'][0]:.0f}",
                f"{s['epochs_run'][0]:.0f}",
            ]
        )
    return Table(
        [
            "variant",
            "test precision",
            "test accuracy",
            "training time per seed",
            "best epoch",
            "epochs run",
        ],
        rows,
        "mean ± 95 % CI over seeds; seeds train together, time per seed = stack time / seeds",
    )


def _caching_sentence(frozen: dict, cached: dict, acc: dict[str, list[float]]) -> str:
    ratio = frozen["stack_seconds"] / cached["stack_seconds"]
    same = max(abs(a - b) for a, b in zip(acc["frozen5"], acc["cached5"], strict=True))
    return (
        f"Caching the frozen layers made training {ratio:.1f}× "
        f"{'faster' if ratio >= 1 else 'slower'} ({frozen['stack_seconds']:.2f} s → "
        f"{cached['stack_seconds']:.2f} s for all seeds, the one-off feature computation "
        f"included); per seed the test accuracy differs by at most {points(same)} from the "
        "uncached run (same seeds, same stopping rule)."
    )


def _helped_sentence(variants: dict[str, dict], acc: dict[str, list[float]], cfg: dict) -> str:
    """Did transfer help? The best variant on validation against training from scratch."""
    others = {v: r for v, r in variants.items() if v != "scratch"}
    best_v = max(others, key=lambda v: others[v]["summary"]["val_acc"][0])
    c = paired(acc[best_v], acc["scratch"])
    label, best = variants[best_v]["label"], pm(others[best_v]["summary"]["test_acc"])
    scratch = pm(variants["scratch"]["summary"]["test_acc"])
    if c.diff > 0 and c.significant:
        return (
            f"Transfer helped: the best variant on validation ({label}) reaches {best} test "
            f"accuracy vs {scratch} from scratch ({c.evidence()})."
        )
    if c.diff < 0 and c.significant:
        n_train = variants["scratch"]["n_train"]
        return (
            f"Transfer did NOT help here: training the same MLP from scratch on the {n_train} "
            f"images gives {scratch} test accuracy, significantly better than the best transfer "
            f"variant on validation ({label}, {best}; {c.evidence()}). Plausibly the top layers "
            f"of a {cfg['source_digits']} classifier are too specific to it to serve "
            f"{cfg['target_digits']}."
        )
    return (
        f"Transfer made no significant difference: the best variant on validation ({label}, "
        f"{best}) against {scratch} from scratch ({c.evidence()})."
    )


def _unfreeze_sentence(u: dict, acc: dict[str, list[float]], cfg: dict) -> str:
    base, factor = u["base_variant"], cfg["unfreeze_lr_factor"]
    if factor < 1:
        lr_text = f"a {1 / factor:g}× smaller learning rate"
    elif factor > 1:
        lr_text = f"a {factor:g}× larger learning rate"
    else:
        lr_text = "the same learning rate"
    text = (
        f"Unfreezing: the better frozen variant on validation accuracy was {base}; unfreezing "
        f"its top two hidden layers (with {lr_text}) gives {pm(u['summary']['test_acc'])} test "
        "accuracy"
    )
    if base in acc:
        c = paired(acc["unfreeze2"], acc[base])
        text += f"; the {versus(c, 'unfrozen model', base + ' alone')}"
    return text + "."


def _geron_transfer(variants: dict, cfg: dict) -> list[Table]:
    pub = published()["geron_digits"]
    rows = []
    for v, (lo, hi) in pub["transfer"].items():
        if v in variants:
            ours = 100 * variants[v]["summary"]["test_acc"][0]
            rows.append(
                [
                    variants[v]["label"],
                    _span(lo, hi),
                    f"{ours:.2f} %",
                    against_range(ours, lo, hi, "Géron"),
                ]
            )
    if not rows:
        return []
    note = (
        ""
        if cfg["per_digit"] == pub["per_digit"]
        else (f" Géron used {pub['per_digit']} images per digit, this run {cfg['per_digit']}.")
    )
    return [
        Table(
            ["variant", "published (accuracy)", "this run (accuracy)", "comparison"],
            rows,
            f"Published: {pub['source']}. {pub['note']}{note}",
        )
    ]


# ----------------------------------------------------------------------------------- environment


def environment(manifest: dict[str, Any] | None, folders: dict[str, Path | None]) -> Section:
    sec = Section("environment", "Environment and provenance")
    rows = []
    for study, folder in folders.items():
        if folder is None:
            rows.append([study, "—", "—", "—", "—"])
            continue
        cfg = runs.read_json(folder / "config.json")
        m = runs.read_json(folder / "metrics.json")
        env = cfg.get("environment", {})
        wall = (manifest or {}).get("wall_seconds", {}).get(study, m.get("wall_seconds"))
        rows.append(
            [
                study,
                str(folder),
                f"seed {cfg.get('seed')}",
                f"{wall:.0f} s" if isinstance(wall, int | float) else "—",
                f"torch {env.get('torch')}, {cfg.get('device', 'cpu')}, "
                f"{env.get('cpu_count')} CPUs, {env.get('cuda') or 'no GPU'}",
            ]
        )
    sec.tables.append(Table(["study", "results folder", "seed", "wall time", "environment"], rows))
    any_cfg = next((runs.read_json(f / "config.json") for f in folders.values() if f), None)
    if any_cfg:
        env = any_cfg["environment"]
        sec.bullets.append(
            f"Python {env.get('python')}, numpy {env.get('numpy')}, torch {env.get('torch')}, "
            f"mnistlab {env.get('mnistlab')}; {env.get('platform')}"
        )
        data = any_cfg.get("data") or {}
        if data:
            sec.bullets.append(f"MNIST source: {data['source']} ({data['location']})")
            for name, digest in data["sha256"].items():
                sec.bullets.append(f"MNIST {name}: SHA-256 {digest} (verified at load)")
    fs = folders.get("fewshot")
    if fs is not None:
        m = runs.read_json(fs / "metrics.json")
        for name, r in m["backbones"].items():
            flag = "RANDOM (not ImageNet)" if r["random_weights"] else "ImageNet"
            sec.bullets.append(
                f"{name} weights: {flag} — {r['weights_source']}, "
                f"digest {r['weights_digest'][:16]}…"
            )
        for name, reason in m.get("skipped", {}).items():
            sec.bullets.append(f"{name} weights: MISSING — skipped. {reason}")
    if manifest:
        sec.bullets.append(
            f"Profile: {manifest.get('profile')}; command: {manifest.get('command')}; "
            f"finished {manifest.get('finished')}"
        )
    return sec


# ----------------------------------------------------------------------------------- best


def _target(value: float, target: float | None) -> str:
    if target is None:
        return "—"
    return (
        f"met ({value:.2f} ≥ {target:g})"
        if value >= target
        else f"missed ({value:.2f} < {target:g})"
    )


def _picks(chosen: dict[str, int]) -> str:
    """``L-BFGS probe, l2, C=1 ×3; Adam head, lr 0.003 ×2`` (most frequent first)."""
    return "; ".join(f"{k} ×{v}" for k, v in sorted(chosen.items(), key=lambda kv: -kv[1]))


def fewshot_best(folder: Path | None, specified: Path | None) -> Section:
    sec = Section("fewshot-best", "1b. Few-shot: the best honest protocol")
    if folder is None:
        sec.missing = "no finished best-protocol run (mnistlab run fewshot-best)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    cfg = _config(folder)
    targets = published()["targets"]
    sec.paragraphs.append(
        "The same frozen features and training images; per seed and size the head is chosen on "
        f"the {cfg['val_per_class']}-per-class validation split among the as-specified Adam "
        f"head (lr from {len({cfg['lr'], *cfg['lr_grid']})} values, epoch on validation) and "
        f"multinomial logistic regression fitted by L-BFGS over {len(cfg['transforms'])} "
        f"feature transforms × {len(cfg['c_grid'])} regularisation strengths; the choice is "
        "then scored once on the test set. Ablation: each chosen ingredient removed once."
    )
    for name, r in m["backbones"].items():
        rows, ablations = [], []
        for row in r["table"]:
            c = paired(row["per_seed_test_acc"], row["per_seed_adam_test_acc"])
            goal = targets.get(f"fewshot_{name}_test_acc", {}).get(str(row["size"]))
            rows.append(
                [
                    str(row["size"]),
                    pm(row["adam_test_acc"]),
                    pm(row["test_acc"]),
                    f"{'+' if c.diff >= 0 else '−'}{points(c.diff)} ({c.evidence()})",
                    _picks(row["chosen"]),
                    _target(100 * row["test_acc"][0], goal),
                ]
            )
            for ing, drop in sorted(row["ablation_drop"].items()):
                ablations.append(
                    [str(row["size"]), ing, f"{100 * drop[0]:+.2f} ± {100 * drop[1]:.2f}"]
                )
        sec.tables.append(
            Table(
                [
                    "images/class",
                    "as specified (honest)",
                    "best protocol",
                    "difference",
                    "chosen (seeds)",
                    "target",
                ],
                rows,
                f"{name}: test accuracy, mean ± 95 % CI over seeds (difference paired by seed)",
            )
        )
        if ablations:
            sec.tables.append(
                Table(
                    ["images/class", "ingredient removed", "test accuracy lost (points)"],
                    ablations,
                    f"{name}: ablation of the chosen recipe (mean ± 95 % CI over seeds; negative = "
                    "the ingredient cost accuracy)",
                )
            )
    for name, reason in m.get("skipped", {}).items():
        sec.bullets.append(f"{name} SKIPPED: {reason}")
    return sec


def digits_best(folder: Path | None, specified: Path | None) -> Section:
    sec = Section("digits-best", "4b. Digits: the best honest protocol")
    if folder is None:
        sec.missing = "no finished best-protocol run (mnistlab run digits-best)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    cfg = _config(folder)
    targets = published()["targets"]
    found, src = m["search"], m["source"]
    best = src["best"]
    p = found["params"]
    sec.paragraphs.append(
        f"Source digits {cfg['source_digits']}: a {cfg['folds']}-fold cross-validated Optuna "
        f"search ({found['n_trials']} trials, {found['n_pruned']} pruned) over lr, L2, batch "
        "size, batch norm, dropout, lr schedule and augmentation chose: "
        + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items())
        + f" (CV accuracy {pct(found['cv_acc'])}); retrained on all source images for "
        f"{found['epochs']} epochs: test precision {pct(best['test_precision'])}, accuracy "
        f"{pct(best['test_acc'])} — target "
        f"{_target(100 * best['test_precision'], targets['digits_source_test_precision'])}."
    )
    if specified is not None and (specified / "tune" / "result.json").is_file():
        tuned = runs.read_json(specified / "tune" / "result.json")
        c = compare_correct(best["test_correct"], tuned["test_correct"], best["test_n"])
        sec.paragraphs.append(
            f"Against the as-specified tuned model (test precision "
            f"{pct(tuned['test_precision'])}): the searched recipe is "
            f"{'+' if c.diff >= 0 else '−'}{points(c.diff)} in accuracy ({c.evidence()})."
        )
    abl = [
        [
            k.removeprefix("without "),
            pct(v["test_precision"]),
            f"{100 * (best['test_precision'] - v['test_precision']):+.2f}",
        ]
        for k, v in src.items()
        if k.startswith("without ")
    ]
    if abl:
        sec.tables.append(
            Table(
                ["ingredient removed", "test precision", "points lost"],
                abl,
                "ablation of the searched source recipe (one retrain each)",
            )
        )
    rows = []
    for v, r in m["transfer"].items():
        spec_acc, c = None, None
        if specified is not None and (specified / "transfer" / f"{v}.json").is_file():
            spec = runs.read_json(specified / "transfer" / f"{v}.json")
            spec_acc = [s["test_acc"] for s in spec["seeds"]]
            # The seed fixes the 100-per-digit draw, so runs pair by seed — only seeds both ran.
            spec_by_seed = {s["seed"]: s["test_acc"] for s in spec["seeds"]}
            best_by_seed = dict(zip(r["seeds"], r["per_seed_test_acc"], strict=True))
            common = sorted(set(spec_by_seed) & set(best_by_seed))
            if common:
                c = paired([best_by_seed[s] for s in common], [spec_by_seed[s] for s in common])
        recipe = r["chosen"]
        chosen = (
            f"{recipe['source']} source, lr {recipe['lr'] * recipe['factor']:g}, L2 "
            f"{recipe['l2']:g}, augmentation {recipe['augment']}"
        )
        ablation = "; ".join(f"{k}: {100 * d:+.2f}" for k, d in r["ablation"].items()) or "—"
        rows.append(
            [
                v,
                pm(mean_ci_of(spec_acc)) if spec_acc else "—",
                pm(r["test_acc"]),
                f"{'+' if c.diff >= 0 else '−'}{points(c.diff)} ({c.evidence()})" if c else "—",
                chosen,
                ablation,
                _target(100 * r["test_acc"][0], targets["transfer_test_acc"].get(v)),
            ]
        )
    sec.tables.append(
        Table(
            [
                "variant",
                "as specified",
                "best protocol",
                "difference",
                "chosen on validation",
                "ablation (points lost)",
                "target",
            ],
            rows,
            f"transfer to {cfg['target_digits']} with {cfg['per_digit']} images per digit: test "
            "accuracy, mean ± 95 % CI over the same seeds and draws",
        )
    )
    return sec


def mean_ci_of(values: list[float]) -> tuple[float, float]:
    from mnistlab.stats import mean_ci

    return mean_ci(values)
