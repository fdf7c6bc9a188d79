"""Sections of the few-shot studies: the transfer as specified and its best honest protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistlab.report.sections.common import (
    Section,
    Table,
    count,
    fig,
    opening,
    picks,
    pm,
    published,
    published_table,
    target,
)
from mnistlab.report.verdict import amount, compare, signed
from mnistlab.stats import paired


def fewshot(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("fewshot", folder)
    if m is None:
        return sec
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
    sec.figures += fig(folder, "error_vs_size", "Lowest test error vs training-set size")
    sec.figures += fig(folder, "epochs_vs_size", "Epochs to best test accuracy vs size")
    for name in m["backbones"]:
        sec.figures += fig(folder, f"curves_{name}", f"{name}: test accuracy per epoch")
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
    flattery = compare(
        c,
        "the reported test accuracy",
        "with the epoch chosen on validation",
        higher="higher",
        lower="lower",
    )
    sec.paragraphs.append(
        f"{name}: choosing the epoch on the test set instead of on a {cfg['val_per_class']}-"
        f"per-class validation split (same lr {cfg['lr']:g}): {flattery}; "
        f"{_lr_choice(r, cfg)}."
    )


def _lr_choice(r: dict, cfg: dict) -> str:
    """Choosing the learning rate on validation too, against the fixed lr (both honest)."""
    candidates = count(len({cfg["lr"], *cfg["lr_grid"]}), "candidate")
    what = f"choosing the learning rate on validation as well (from {candidates})"
    rows = r["table"]
    if all("per_seed_val_selected_test_acc" in row for row in rows):
        chosen = [v for row in rows for v in row["per_seed_val_selected_test_acc"]]
        fixed = [v for row in rows for v in row["per_seed_val_epoch_same_lr_test_acc"]]
        c = paired(chosen, fixed, "(seed, size) pairs")
        return compare(c, what, f"the fixed lr {cfg['lr']:g}", higher="better", lower="worse")
    g = sum(row["val_selected_test_acc"][0] - row["val_epoch_same_lr_test_acc"][0] for row in rows)
    g /= len(rows)
    side = "higher" if g > 0 else "lower"
    return (  # results written before per-seed values were stored: a mean, no test
        f"{what} measured {amount(g)} {side} on average over sizes (no per-seed values "
        "stored, so no test and no verdict)"
        if g
        else f"{what} measured the same on average over sizes (no test)"
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
    return published_table(
        ["backbone", "images/class", "published", "this run", "difference (points)"],
        rows,
        f"Published: {pub['source']}. {pub['note']}",
    )


def fewshot_best(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("fewshot-best", folder)
    if m is None:
        return sec
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
        if r.get("views", {}).get("images"):
            sec.paragraphs.append(_views_line(name, r["views"], cfg))
        rows, ablations = [], []
        for row in r["table"]:
            c = paired(row["per_seed_test_acc"], row["per_seed_adam_test_acc"])
            goal = targets.get(f"fewshot_{name}_test_acc", {}).get(str(row["size"]))
            rows.append(
                [
                    str(row["size"]),
                    pm(row["adam_test_acc"]),
                    pm(row["test_acc"]),
                    signed(c),
                    picks(row["chosen"]),
                    target(100 * row["test_acc"][0], goal),
                ]
            )
            for ing, drop in sorted(row["ablation_drop"].items()):
                ablations.append([str(row["size"]), ing, pm(drop, digits=2, unit="", sign=True)])
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


def _views_line(name: str, v: dict[str, Any], cfg: dict[str, Any]) -> str:
    """What the views search added, and what it cost."""
    kinds = "; ".join(f"{k}: {label}" for k, label in v["strengths"].items())
    return (
        f"{name}: the search may also fit each head on 1 or {cfg['views']} augmented views of "
        f"each training image ({kinds}; one fixed random warp per view, through the same frozen "
        f"backbone; validation and test images never warped), for sizes up to {v['up_to']} per "
        f"class: {v['images']:,} view images, whose features took {v['extract_seconds']:.0f} s "
        "in this run (features found in the cache load in about a second)."
    )
