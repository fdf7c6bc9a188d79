"""The spatial transformer network of the PyTorch STN tutorial, and the same CNN without it.

One deliberate change from the tutorial: the transformer samples the *un-normalised* image
(background 0) and the classifier normalises afterwards. The tutorial normalises first, so
``grid_sample``'s zero padding (0) differs from the normalised background (−0.1307/0.3081 ≈
−0.42): every zoom-out then draws a bright frame, and the net can learn to exploit or suffer from
it (long runs have been reported to collapse). Sampling before normalising makes the padding
equal the background, so zooming out is free of artefacts.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class Classifier(nn.Module):
    """The tutorial's CNN: conv 1→10 k5, conv 10→20 k5 + dropout2d, fc 320→50, fc 50→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, training=self.training)
        return self.fc2(x)  # logits; the tutorial's log_softmax + NLL equals cross-entropy


class STNNet(nn.Module):
    """Input: images in [0, 1], shape [B, 1, 28, 28]. Output: logits.

    ``use_stn=False`` gives the baseline: the identical classifier with no transformer.
    """

    def __init__(self, use_stn: bool = True) -> None:
        super().__init__()
        self.use_stn = use_stn
        self.classifier = Classifier()
        if use_stn:
            self.localization = nn.Sequential(
                nn.Conv2d(1, 8, kernel_size=7),
                nn.MaxPool2d(2, stride=2),
                nn.ReLU(True),
                nn.Conv2d(8, 10, kernel_size=5),
                nn.MaxPool2d(2, stride=2),
                nn.ReLU(True),
            )
            self.fc_loc = nn.Sequential(nn.Linear(10 * 3 * 3, 32), nn.ReLU(True), nn.Linear(32, 6))
            # Start at the identity transform, as the tutorial does.
            nn.init.zeros_(self.fc_loc[2].weight)
            with torch.no_grad():
                self.fc_loc[2].bias.copy_(torch.tensor(IDENTITY_THETA))

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - MNIST_MEAN) / MNIST_STD

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The 2×3 affine matrix per image (maps output coordinates to input coordinates)."""
        xs = self.localization(self.normalise(x)).flatten(1)
        return self.fc_loc(xs).view(-1, 2, 3)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(warped images in [0, 1], θ): sampling happens before normalisation (see module doc)."""
        theta = self.theta(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros"), theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_stn:
            x, _ = self.transform(x)
        return self.classifier(self.normalise(x))


def to_input(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 ``[B, 28, 28]`` → float ``[B, 1, 28, 28]`` in [0, 1], on the device, per batch."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.unsqueeze(1).float().div_(255.0)
