"""Figures of the few-shot study: error and epochs-to-best vs size, per-size training curves."""

from __future__ import annotations

from pathlib import Path

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
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in sizes:
            curve = r["mean_curves"][str(n)]
            ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], label=f"{n}/class")
        ax.set(
            xlabel="epoch",
            ylabel="test accuracy (%)",
            title=f"{_label(name, r)}: test accuracy per epoch (mean over seeds)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / f"curves_{name}")
