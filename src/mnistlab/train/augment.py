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

from mnistlab.models.grid import affine_grid


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
    flat = x.reshape(k * b, 1, h, w).float()
    out = F.grid_sample(
        flat, affine_grid(theta, h, w), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8).view(k, b, h, w)
