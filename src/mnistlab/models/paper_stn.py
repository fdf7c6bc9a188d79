"""The distorted-MNIST networks of the spatial-transformer paper: CNN and ST-CNN (affine).

Jaderberg et al. 2015, appendix A.1: every CNN is "9×9 convolution, 2×2 max-pooling, 7×7
convolution, 2×2 max-pooling, softmax", ReLU throughout; the ST-CNN puts an affine spatial
transformer, its localisation network a small CNN, in front of the same classifier; the
localisation's last layer starts at the identity transform. Filter counts are not legible in
what this machine can read of the appendix; ours (README, design decisions): 32 and 32 in the
classifier, 20 and 20 (5×5) in the localisation network with a 50-unit hidden layer. No dropout,
no weight decay (the appendix trains without either).

The transformer samples the un-normalised image (background 0) and its output has the input's
size (42×42 for RTS), as in the rest of this project (``models/stn.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mnistlab.models import stack
from mnistlab.models.stn import StackedSTN, STNNet

CONV1, CONV2 = 32, 32  # classifier filters (9×9, then 7×7)
LOC_CONV, LOC_HIDDEN = 20, 50  # localisation filters (5×5, twice) and hidden units


def _after(size: int, kernel: int) -> int:
    """Side after a valid convolution and a 2×2 max-pool (floor)."""
    return (size - kernel + 1) // 2


class PaperClassifier(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, CONV1, kernel_size=9)
        self.conv2 = nn.Conv2d(CONV1, CONV2, kernel_size=7)
        side = _after(_after(size, 9), 7)
        self.fc = nn.Linear(CONV2 * side * side, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc(x.flatten(1))


class PaperNet(STNNet):
    """Input: images in [0, 1], ``[B, 1, size, size]``; output: logits. ``use_stn=False`` is
    the paper's CNN, ``True`` its ST-CNN (affine)."""

    def __init__(self, use_stn: bool = True, size: int = 28) -> None:
        self.size = size
        super().__init__(use_stn)

    def make_classifier(self) -> nn.Module:
        return PaperClassifier(self.size)

    def make_localization(self) -> tuple[nn.Sequential, nn.Sequential]:
        conv = nn.Sequential(
            nn.Conv2d(1, LOC_CONV, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(LOC_CONV, LOC_CONV, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
        )
        side = _after(_after(self.size, 5), 5)
        fc = nn.Sequential(
            nn.Linear(LOC_CONV * side * side, LOC_HIDDEN), nn.ReLU(True), nn.Linear(LOC_HIDDEN, 6)
        )
        return conv, fc


def init_paper_net(use_stn: bool, size: int, seed: int) -> PaperNet:
    """torch's default initialisation drawn from ``seed`` alone (identity-started θ)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PaperNet(use_stn, size)


class StackedPaperNet(StackedSTN):
    """K members of :class:`PaperNet` as one grouped network (the localisation network and the
    transformer are :class:`StackedSTN`'s; only the classifier differs)."""

    dropout = 0.0

    def __init__(self, use_stn: bool, device: torch.device, loc_lr_scale: float = 1.0):
        super().__init__(use_stn, device)
        self.loc_lr_scale = loc_lr_scale

    def lr_scale(self, name: str) -> float:
        """The localisation network may learn slower than the classifier (SGD only)."""
        return self.loc_lr_scale if name.startswith(("localization.", "fc_loc.")) else 1.0

    def classify(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, step: stack.Step
    ) -> torch.Tensor:
        mf, k, b = self.memory_format, x.shape[0], x.shape[1]
        g = stack.conv_pool_relu(x, p, "classifier.conv1", mf)
        h = stack.conv_pool_relu(g, p, "classifier.conv2", mf).reshape(k, b, -1)
        return stack.linear(h, p, "classifier.fc")
