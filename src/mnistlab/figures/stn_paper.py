"""Figures of the distorted-MNIST study: inputs and the ST-CNN's outputs per distortion, the
learned rotation and scale against the drawn ones, test error per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnistlab.plotting import image_grid, plt, save_figure

_COLOURS = {"cnn": "#4c72b0", "st-cnn": "#c44e52"}


def _padded(images: np.ndarray, side: int) -> np.ndarray:
    """Centre ``[n, h, w]`` images on a ``side``×``side`` black canvas (RTS is 42×42)."""
    n, h, w = images.shape
    out = np.zeros((n, side, side), dtype=images.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top : top + h, left : left + w] = images
    return out


def examples(out: Path, shown: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Per distortion, two rows: test inputs, then what the first seed's ST-CNN makes of them."""
    side = max(x.shape[-1] for x, _ in shown.values())
    rows, labels = [], []
    for kind, (inputs, warped) in shown.items():
        rows += [_padded(inputs, side), _padded(warped, side)]
        labels += [f"{kind} input", f"{kind} ST out"]
    fig = image_grid(np.stack(rows), row_labels=labels)
    fig.suptitle(
        "distorted test inputs and the ST-CNN's transformed versions (seed 0)", fontsize=9, y=1.01
    )
    save_figure(fig, out / "paper_examples")


def learned_vs_drawn(out: Path, points: dict[str, dict[str, Any]]) -> None:
    """Learned θ rotation against the drawn angle (undoing lies on y = −x), and the learned
    θ scale against the drawn scale (undoing: proportional), one panel per distortion and
    quantity that has both."""
    panels = [(k, q, v) for k, per in points.items() for q, v in per.items()]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (kind, what, (drawn, learned)) in zip(axes[0], panels, strict=True):
        ax.scatter(drawn, learned, s=2, alpha=0.25, color="#c44e52", rasterized=True)
        lo, hi = float(np.min(drawn)), float(np.max(drawn))
        if what == "rotation":
            ax.plot([lo, hi], [-lo, -hi], "k--", lw=0.8, label="undoes it (y = −x)")
            ax.set(xlabel="drawn rotation (°)", ylabel="learned θ rotation (°)")
        else:
            ax.set(xlabel="drawn scale", ylabel="learned θ scale √|det A|")
        ax.set_title(f"{kind}: {what}", fontsize=9)
        ax.grid(alpha=0.3)
        if what == "rotation":
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "paper_learned_vs_drawn")


def error_curves(out: Path, results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Test error per epoch (mean over seeds) of both models, one panel per distortion."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.4), squeeze=False)
    for ax, (kind, per_model) in zip(axes[0], results.items(), strict=True):
        for model, r in per_model.items():
            err = [100 * (1 - a) for a in r["test_acc_curve"]]
            ax.plot(range(1, len(err) + 1), err, "o-", ms=3, color=_COLOURS[model], label=model)
        ax.set(xlabel="epoch", ylabel="test error (%)", title=kind)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "paper_error_curves")
