"""Figures of the few-shot study: error and epochs-to-best vs size, per-size training curves."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from mnistlab import runs
from mnistlab.plotting import plt, save_figure


def _label(name: str, result: dict) -> str:
    return f"{name} (RANDOM weights)" if result["random_weights"] else name


def write_all(out: Path, results: dict[str, dict], sizes: tuple[int, ...]) -> None:
    if not results:
        return
    panels = (
        ("lowest test error (%)", "error_vs_size", [("lowest_test_error", 100, "", "-")]),
        (
            "epochs",
            "epochs_vs_size",
            [
                ("epochs_to_best", 1, "best test accuracy", "-"),
                ("epochs_to_near_best", 1, "within 0.5 pt of best", "--"),
            ],
        ),
    )
    for ylabel, stem, series in panels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in results.items():
            for key, scale, what, style in series:
                if key not in r["table"][0]:
                    continue
                xs = [row["size"] for row in r["table"]]
                ys = [scale * row[key][0] for row in r["table"]]
                err = [scale * row[key][1] for row in r["table"]]
                label = f"{_label(name, r)} {what}".strip()
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, ls=style, label=label)
        title = ylabel if stem == "error_vs_size" else "epochs to best test accuracy"
        ax.set(xlabel="training images per class", ylabel=ylabel, xticks=list(sizes))
        ax.set_title(f"{title} (mean ± 95% CI over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / stem)
    for name, r in results.items():
        rows = runs.read_csv(out / r["folder"] / "curves.csv")
        by_size: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            by_size[int(row["size"])][int(row["epoch"])].append(float(row["test_acc"]))
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in sizes:
            epochs = sorted(by_size[n])
            ax.plot(epochs, [100 * np.mean(by_size[n][e]) for e in epochs], label=f"{n}/class")
        ax.set(
            xlabel="epoch",
            ylabel="test accuracy (%)",
            title=f"{_label(name, r)}: test accuracy per epoch (mean over seeds)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / f"curves_{name}")
