"""``F.affine_grid`` (``align_corners=False``) as three multiply-adds per output coordinate.

``F.affine_grid`` builds the grid as a batched product of an ``[N, H·W, 3]`` base with each
``[3, 2]`` θ; on the CPU that tiny-matrix ``bmm`` (and its backward) cost more than the
transformer's convolutions around it, several times what the elementwise form below costs
(README, The training engine). On this CPU the grid is the same to the bit
(``tests/test_engine_paths.py`` checks it to float tolerance, the CPU kernels' exact order being
theirs to change), and so is its gradient with respect to θ up to summation order.
"""

from __future__ import annotations

import torch


def _coords(n: int, device: torch.device) -> torch.Tensor:
    """Pixel centres in normalised [-1, 1] coordinates (``align_corners=False``), computed as
    ``F.affine_grid`` computes them, so that the grids agree to the bit."""
    return torch.linspace(-1, 1, n, device=device) * (n - 1) / n


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid ``[N, H, W, 2]`` for θ ``[N, 2, 3]`` (output → input coordinates)."""
    xs = _coords(width, theta.device)
    ys = _coords(height, theta.device)[:, None]
    t = theta.reshape(-1, 6)[:, :, None, None]
    gx = (t[:, 0] * xs + t[:, 1] * ys) + t[:, 2]  # the order of F.affine_grid's sums
    gy = (t[:, 3] * xs + t[:, 4] * ys) + t[:, 5]
    return torch.stack([gx, gy], -1)
