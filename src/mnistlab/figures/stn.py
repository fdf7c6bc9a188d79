"""Figures of the STN studies: θ histograms, example warps, accuracy curves (overall / per kind)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnistlab.plotting import KIND_COLOURS, image_grid, plt, save_figure

_PARAMS = ("rotation_deg", "scale_x", "scale_y", "shear", "tx", "ty")


def theta_figures(
    out: Path,
    parts: dict[str, np.ndarray],
    images: np.ndarray,
    warped: np.ndarray,
    examples: dict[str, list[int]],
) -> None:
    """Histograms of every θ component, and for each deformation type the test images where
    the STN applies the most of it (``examples``: their indices), input beside output."""
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5))
    for ax, name in zip(axes.flat, _PARAMS, strict=True):
        ax.hist(parts[name], bins=60, color="#4c72b0")
        ax.set_title(name, fontsize=9)
        ax.axvline({"scale_x": 1, "scale_y": 1}.get(name, 0), color="k", lw=0.8, ls=":")
    fig.suptitle("STN θ on the test set (dotted: identity)")
    fig.tight_layout()
    save_figure(fig, out / "theta_hist")
    fig = image_grid(_pairs(images, warped, examples.values()), row_labels=list(examples))
    fig.suptitle("largest deformations: input | STN output", fontsize=9)
    save_figure(fig, out / "theta_examples")


def _pairs(images: np.ndarray, warped: np.ndarray, rows) -> np.ndarray:
    """``[rows, k, 28, 56]``: each chosen image beside the STN's output."""
    return np.stack(
        [np.stack([np.concatenate([images[i], warped[i]], axis=1) for i in idx]) for idx in rows]
    )


def seed_curves(
    out: Path,
    curves: dict[str, dict[str, list[list[float]]]],
    title: str,
    kinds: tuple[str, ...] = ("all",),
) -> None:
    """Train (dashed, eval mode on a fixed subset) and test (solid) accuracy per epoch, per
    model and kind: every seed a thin line, their mean bold — the swings between epochs stay
    visible instead of being averaged away. ``curves[model][column]``: one list per seed."""
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4), squeeze=False)
    colours = {"stn": "#c44e52", "baseline": "#4c72b0"}
    for ax, kind in zip(axes[0], kinds, strict=True):
        suffix = "" if kind == "all" else f"_{kind}"
        for model, c in curves.items():
            for split, ls, label in (("train_eval", "--", "train"), ("test", "-", "test")):
                seeds = 100 * np.asarray(c[f"{split}_acc{suffix}"])
                epochs = np.arange(1, seeds.shape[1] + 1)
                for one in seeds:
                    ax.plot(epochs, one, ls, color=colours[model], lw=0.6, alpha=0.35)
                ax.plot(
                    epochs,
                    seeds.mean(0),
                    ls,
                    color=colours[model],
                    lw=2.0,
                    label=f"{model} {label} (mean of {len(seeds)})",
                )
        ax.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: {kind}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_curves")


def kind_examples(
    out: Path, rows: dict[str, tuple[np.ndarray, np.ndarray]], stem: str = "deform_examples"
) -> None:
    """One row per label (e.g. a seed and a kind): its images, input beside the STN's output."""
    grid = np.stack([np.concatenate([inputs, warped], axis=2) for inputs, warped in rows.values()])
    fig = image_grid(grid, row_labels=list(rows))
    fig.suptitle("input | STN output", fontsize=9)
    save_figure(fig, out / stem)


def seeds_grid(
    out: Path, images: np.ndarray, warped_by_seed: list[np.ndarray], seeds: list[int]
) -> None:
    """The same test images through every seed's STN: input | output, one row per seed."""
    kind_examples(
        out,
        {f"seed {s}": (images, w) for s, w in zip(seeds, warped_by_seed, strict=True)},
        stem="theta_by_seed",
    )


def scale_by_kind(out: Path, scale: dict[str, list[float]], zoom: float) -> None:
    """Histogram of the STN's isotropic θ scale per input kind (1/zoom would undo the
    zoom-out)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in scale.items():
        ax.hist(values, bins=60, alpha=0.6, color=KIND_COLOURS.get(name), label=name)
    ax.axvline(1.0, color="k", ls=":", lw=0.8)
    ax.axvline(
        1 / zoom, color="k", ls="--", lw=0.8, label=f"1/{zoom:g} (undoes {zoom:g}× zoom-out)"
    )
    ax.set(xlabel="θ scale √|det A|", ylabel="test images")
    ax.legend(fontsize=8)
    save_figure(fig, out / "scale_by_kind")
