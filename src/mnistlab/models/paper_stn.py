"""The distorted-MNIST networks of the spatial-transformer paper: CNN and ST-CNN (affine).

Jaderberg et al. 2015, appendix A.1: every CNN is "9×9 convolution, 2×2 max-pooling, 7×7
convolution, 2×2 max-pooling, softmax", ReLU throughout; the ST-CNN puts an affine spatial
transformer, its localisation network a small CNN, in front of the same classifier; the
localisation's last layer starts at the identity transform. Filter counts are not legible in
what this machine can read of the appendix; ours (README, design decisions): 32 and 32 in the
classifier, 20 and 20 (5×5) in the localisation network with a 50-unit hidden layer. No dropout,
no weight decay (the appendix trains without either).

The transformer samples the un-normalised image (background 0) and its output has the input's
size, as in the rest of this project (``models/stn.py``). ``half=True`` (the RTS study's 42×42
canvas) halves the resolution the way the public reproductions do: the classifier sees the
(transformed) image average-pooled 2×2 — 21×21, pooled with ``ceil_mode`` so that 9×9 and 7×7
still fit — and the localisation network sees it max-pooled 2×2 first
(hvy/chainer-spatial-transformer-networks ``models.py``: ``average_pooling_2d`` before the
classifier "for TC and RTS", ``max_pooling_2d`` first in the localisation network, Chainer's
pooling covering every pixel; luuf/stn-placement halves bilinearly).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mnistlab.models import stack
from mnistlab.models.stn import StackedSTN, STNNet

CONV1, CONV2 = 32, 32  # classifier filters (9×9, then 7×7)
LOC_CONV, LOC_HIDDEN = 20, 50  # localisation filters (5×5, twice) and hidden units


def _after(size: int, kernel: int, ceil: bool = False) -> int:
    """Side after a valid convolution and a 2×2 max-pool (floor, or ceil: every pixel seen)."""
    return (size - kernel + 1 + ceil) // 2


class PaperClassifier(nn.Module):
    def __init__(self, size: int, half: bool = False) -> None:
        super().__init__()
        self.half = half
        self.conv1 = nn.Conv2d(1, CONV1, kernel_size=9)
        self.conv2 = nn.Conv2d(CONV1, CONV2, kernel_size=7)
        side = _after(_after(size // 2 if half else size, 9, half), 7, half)
        self.fc = nn.Linear(CONV2 * side * side, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.half:
            x = F.avg_pool2d(x, 2)
        x = F.relu(F.max_pool2d(self.conv1(x), 2, ceil_mode=self.half))
        x = F.relu(F.max_pool2d(self.conv2(x), 2, ceil_mode=self.half))
        return self.fc(x.flatten(1))


class PaperNet(STNNet):
    """Input: images in [0, 1], ``[B, 1, size, size]``; output: logits. ``use_stn=False`` is
    the paper's CNN, ``True`` its ST-CNN (affine); ``half``: see the module doc."""

    def __init__(self, use_stn: bool = True, size: int = 28, half: bool = False) -> None:
        self.size, self.half = size, half
        super().__init__(use_stn)

    def make_classifier(self) -> nn.Module:
        return PaperClassifier(self.size, self.half)

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        return super().theta(F.max_pool2d(x, 2) if self.half else x)

    def make_localization(self) -> tuple[nn.Sequential, nn.Sequential]:
        conv = nn.Sequential(
            nn.Conv2d(1, LOC_CONV, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(LOC_CONV, LOC_CONV, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
        )
        side = _after(_after(self.size // 2 if self.half else self.size, 5), 5)
        fc = nn.Sequential(
            nn.Linear(LOC_CONV * side * side, LOC_HIDDEN), nn.ReLU(True), nn.Linear(LOC_HIDDEN, 6)
        )
        return conv, fc


def init_paper_net(use_stn: bool, size: int, seed: int, half: bool = False) -> PaperNet:
    """torch's default initialisation drawn from ``seed`` alone (identity-started θ)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PaperNet(use_stn, size, half)


class StackedPaperNet(StackedSTN):
    """K members of :class:`PaperNet` as one grouped network (the localisation network and the
    transformer are :class:`StackedSTN`'s; only the classifier differs)."""

    dropout = 0.0

    def __init__(
        self, use_stn: bool, device: torch.device, loc_lr_scale: float = 1.0, half: bool = False
    ):
        super().__init__(use_stn, device)
        self.loc_lr_scale, self.half = loc_lr_scale, half

    def theta(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return super().theta(p, _pool(x, F.max_pool2d) if self.half else x)

    def lr_scale(self, name: str) -> float:
        """The localisation network may learn slower than the classifier (SGD only)."""
        return self.loc_lr_scale if name.startswith(("localization.", "fc_loc.")) else 1.0

    def classify(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, step: stack.Step
    ) -> torch.Tensor:
        mf, k, b = self.memory_format, x.shape[0], x.shape[1]
        if self.half:
            x = _pool(x, F.avg_pool2d)
        g = stack.conv_pool_relu(x, p, "classifier.conv1", mf, ceil=self.half)
        h = stack.conv_pool_relu(g, p, "classifier.conv2", mf, ceil=self.half).reshape(k, b, -1)
        return stack.linear(h, p, "classifier.fc")


def _pool(x: torch.Tensor, pool) -> torch.Tensor:
    """A 2×2 pool of stacked images ``[K, B, C, H, W]``."""
    return pool(x.flatten(0, 1), 2).unflatten(0, x.shape[:2])
