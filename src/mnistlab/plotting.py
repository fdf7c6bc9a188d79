"""Figure helpers shared by studies and the report: headless backend, PNG + SVG, atomic."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or CI; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np

from mnistlab.io import atomic_write_bytes

KIND_COLOURS = {"original": "#1f77b4", "elastic": "#ff7f0e", "zoom": "#2ca02c"}


def save_figure(fig, stem: Path | str, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` atomically, then close it."""
    stem = Path(stem)
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue()))
    plt.close(fig)
    return paths


def image_grid(
    rows: np.ndarray, titles: list[str] | None = None, row_labels: list[str] | None = None
):
    """A figure of uint8 images ``[n_rows, n_cols, H, W]``, column titles and row labels."""
    n_rows, n_cols = rows.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.1 * n_cols, 1.1 * n_rows), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.imshow(rows[r, c], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and titles:
                ax.set_title(titles[c], fontsize=8)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=7)
    fig.tight_layout()
    return fig
