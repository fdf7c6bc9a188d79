"""Sigma sweep for the elastic deformation: a grid of the same digits at several sigmas.

Used to choose ``DeformParams.sigma`` (see its docstring). Usage:
    python benchmarks/deform_sigma.py -o results/benchmarks/deform_sigma.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mnistlab.data import DeformParams, elastic, load_mnist
from mnistlab.plotting import image_grid, save_figure

SIGMAS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 25.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", default="results/benchmarks/deform_sigma.png")
    parser.add_argument("-n", type=int, default=8)
    args = parser.parse_args()
    images, labels = load_mnist("test")
    images = images[: args.n]
    cols = [elastic(images, seed=0, params=DeformParams(sigma=s), workers=1) for s in SIGMAS]
    grid = np.stack([c.numpy() for c in cols], axis=1)
    fig = image_grid(
        grid,
        titles=[f"σ={s:g}" for s in SIGMAS],
        row_labels=[str(int(v)) for v in labels[: args.n]],
    )
    out = Path(args.output)
    print("wrote", save_figure(fig, out.with_suffix(""), formats=("png",))[0])


if __name__ == "__main__":
    main()
