"""Random affine augmentation of training batches, one generator per member.

Small shifts, rotations and scalings of the digit — the classic MNIST augmentations — drawn
fresh for every training image of every step. Each member draws from its own generator and only
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


@dataclass(frozen=True)
class Augment:
    """Maximum magnitudes, each drawn uniformly in [−max, max] per image."""

    shift: float = 0.0  # pixels
    rotate: float = 0.0  # degrees
    scale: float = 0.0  # relative (0.1 = ±10 %)

    @property
    def active(self) -> bool:
        return bool(self.shift or self.rotate or self.scale)

    def label(self) -> str:
        parts = [f"shift ±{self.shift:g} px"] if self.shift else []
        parts += [f"rotate ±{self.rotate:g}°"] if self.rotate else []
        parts += [f"scale ±{100 * self.scale:g} %"] if self.scale else []
        return ", ".join(parts) or "none"


def _thetas(spec: Augment, n: int, size: int, g: torch.Generator, device) -> torch.Tensor:
    """``n`` random 2×3 matrices (output → input coordinates, normalised units)."""
    u = torch.rand((n, 4), generator=g, device=device) * 2 - 1
    angle = u[:, 0] * math.radians(spec.rotate)
    scale = 1 + u[:, 1] * spec.scale
    shift = u[:, 2:] * (2 * spec.shift / size)  # pixels → normalised [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )


def augment_batch(
    x: torch.Tensor,
    specs: Sequence[Augment | None],
    generators: Sequence[torch.Generator],
    rows: Sequence[int],
) -> torch.Tensor:
    """uint8 ``[K, B, H, W]`` → the same batch with each member's augmentation applied to its
    ``rows[k]`` real rows (padding and members without augmentation untouched)."""
    k, b, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device).expand(k, b, 2, 3).clone()
    for i, (spec, g, n) in enumerate(zip(specs, generators, rows, strict=True)):
        if spec is not None and spec.active and n > 0:
            theta[i, :n] = _thetas(spec, n, h, g, x.device)
    flat = x.reshape(k * b, 1, h, w).float()
    grid = F.affine_grid(theta.view(k * b, 2, 3), [k * b, 1, h, w], align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).view(k, b, h, w)
