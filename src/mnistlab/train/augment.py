"""Random affine augmentation of training batches, one generator per member.

Small shifts, rotations and scalings of the digit — the classic MNIST augmentations — and
Simard et al. (2003)'s elastic distortion (a random displacement field, uniform in [−1, 1] per
pixel, smoothed by a Gaussian of σ px and scaled by α px), drawn fresh for every training image
of every step. Each member draws from its own generator and only
for its real rows, so its augmented stream does not depend on which other members share the
stack (the same rule as dropout in ``models/stack.py``). Images stay uint8: the warp samples the
image bilinearly with background 0 and rounds back, so every model's ``prepare`` is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mnistlab.models.grid import affine_grid


@dataclass(frozen=True)
class Augment:
    """Maximum magnitudes, each drawn uniformly in [−max, max] per image."""

    shift: float = 0.0  # pixels
    rotate: float = 0.0  # degrees
    scale: float = 0.0  # relative (0.1 = ±10 %)
    elastic: float = 0.0  # α: px of displacement per unit of the smoothed field (Simard: 34)
    elastic_sigma: float = 4.0  # σ of the field's Gaussian smoothing, px (Simard: 4)

    @property
    def active(self) -> bool:
        return bool(self.shift or self.rotate or self.scale or self.elastic)

    def label(self) -> str:
        parts = [f"shift ±{self.shift:g} px"] if self.shift else []
        parts += [f"rotate ±{self.rotate:g}°"] if self.rotate else []
        parts += [f"scale ±{100 * self.scale:g} %"] if self.scale else []
        parts += (
            [f"elastic α {self.elastic:g} px, σ {self.elastic_sigma:g} px"] if self.elastic else []
        )
        return ", ".join(parts) or "none"


def _thetas(
    specs: list[Augment], counts: list[int], size: int, draws: torch.Tensor
) -> torch.Tensor:
    """Random 2×3 matrices (output → input coordinates, normalised units), one per drawn row:
    ``draws`` holds each row's four uniforms in [0, 1), ``counts[i]`` rows for ``specs[i]``."""

    def per_row(values: list[float]) -> torch.Tensor:
        return torch.repeat_interleave(
            torch.tensor(values, device=draws.device), torch.tensor(counts, device=draws.device)
        )

    u = draws * 2 - 1
    angle = u[:, 0] * per_row([math.radians(s.rotate) for s in specs])
    scale = 1 + u[:, 1] * per_row([s.scale for s in specs])
    shift = u[:, 2:] * per_row([2 * s.shift / size for s in specs]).unsqueeze(1)  # px → [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )


def _elastic_field(
    spec: Augment, n: int, h: int, w: int, generator: torch.Generator
) -> torch.Tensor:
    """Simard et al.'s displacement field for ``n`` images, ``[n, H, W, 2]`` in the grid's
    normalised units: uniform noise, Gaussian-smoothed (kernel ±3σ, at most the image), times
    α pixels."""
    noise = torch.rand((n, 2, h, w), generator=generator, device=generator.device) * 2 - 1
    size = min(2 * math.ceil(3 * spec.elastic_sigma) + 1, 2 * ((min(h, w) - 1) // 2) + 1)
    smooth = separable_blur(noise, size, spec.elastic_sigma)
    px_to_unit = torch.tensor([2 / w, 2 / h], device=noise.device)
    return smooth.permute(0, 2, 3, 1) * spec.elastic * px_to_unit


def separable_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` (same kernel, reflect padding) of ``[..., H, W]`` as two
    small matrix products, ``B_H · x · B_Wᵀ`` — the blur is linear, so its column and row passes
    are fixed H×H and W×W matrices. The same field to float rounding (tested); torchvision's
    25×25 convolution, and a grouped separable one, cost several times the whole affine warp
    (README, The training engine; ``benchmarks/elastic_bench.py``)."""
    h, w = x.shape[-2:]
    return _blur_matrix(h, size, sigma, x) @ x @ _blur_matrix(w, size, sigma, x).T


def _blur_matrix(n: int, size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``B`` with ``B @ v`` = the 1-D Gaussian blur of ``v`` (reflect padding): the blur of
    each unit vector, as a column."""
    half = size // 2
    t = torch.arange(size, dtype=like.dtype, device=like.device) - half
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    eye = torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(1)
    rows = F.conv1d(F.pad(eye, (half, half), mode="reflect"), (k / k.sum()).view(1, 1, size))
    return rows.squeeze(1).T


def augment_batch(
    x: torch.Tensor,
    specs: Sequence[Augment | None],
    generators: Sequence[torch.Generator],
    rows: Sequence[int],
) -> torch.Tensor:
    """uint8 ``[K, B, H, W]`` → the same batch with each member's augmentation applied to its
    ``rows[k]`` real rows (padding and members without augmentation untouched).

    Each member draws its rows' uniforms from its own generator; everything after the draws is
    one batched computation (a loop of small per-member operations cost more than the warp).
    """
    k, b, h, w = x.shape
    drawn = [
        (i, n)
        for i, (spec, n) in enumerate(zip(specs, rows, strict=True))
        if spec is not None and spec.active and n > 0
    ]
    if not drawn:
        return x
    draws = torch.cat(
        [torch.rand((n, 4), generator=generators[i], device=x.device) for i, n in drawn]
    )
    at = torch.cat([torch.arange(n, device=x.device) + i * b for i, n in drawn])
    theta = torch.eye(2, 3, device=x.device).repeat(k * b, 1, 1)
    theta[at] = _thetas([specs[i] for i, _ in drawn], [n for _, n in drawn], h, draws)
    grid = affine_grid(theta, h, w)
    for i, n in drawn:  # after every affine draw: a member's stream is its own either way
        if specs[i].elastic:
            rows_i = slice(i * b, i * b + n)
            grid[rows_i] += _elastic_field(specs[i], n, h, w, generators[i])
    flat = x.reshape(k * b, 1, h, w).float()
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).view(k, b, h, w)
