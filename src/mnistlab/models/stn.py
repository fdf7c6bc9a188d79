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

from mnistlab.models import stack
from mnistlab.models.grid import affine_grid

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
        self.classifier = self.make_classifier()
        if use_stn:
            self.localization, self.fc_loc = self.make_localization()
            # Start at the identity transform, as the tutorial does.
            nn.init.zeros_(self.fc_loc[2].weight)
            with torch.no_grad():
                self.fc_loc[2].bias.copy_(torch.tensor(IDENTITY_THETA))

    def make_classifier(self) -> nn.Module:
        return Classifier()

    def make_localization(self) -> tuple[nn.Sequential, nn.Sequential]:
        """(conv–pool–ReLU ×2, fc–ReLU–fc → 6): the layout :class:`StackedSTN` stacks."""
        conv = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=7),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
        )
        return conv, nn.Sequential(nn.Linear(10 * 3 * 3, 32), nn.ReLU(True), nn.Linear(32, 6))

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
    """uint8 ``[..., 28, 28]`` → float ``[..., 1, 28, 28]`` in [0, 1], on the device."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.unsqueeze(-3).float() / 255.0


def init_stn(use_stn: bool, seed: int) -> STNNet:
    """The tutorial's initialisation (torch's defaults) drawn from ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return STNNet(use_stn)


class StackedSTN:
    """K members of :class:`STNNet` (with or without the transformer) as one grouped network.

    Same function per member as the solo module (``tests/test_engine.py`` checks logits and
    gradients against it); channels-last grouped convolutions where the device likes them.
    """

    dropout = 0.5  # the tutorial's Dropout2d and dropout before fc2

    def __init__(self, use_stn: bool, device: torch.device):
        self.use_stn = use_stn
        cl = device.type in ("cpu", "cuda")
        self.memory_format = torch.channels_last if cl else torch.contiguous_format
        self.device = device

    def numeric_path(self) -> str:
        """Which conv-pool path its blocks take here (native or torch): the engine keeps it
        with a checkpoint, since the two agree to rounding only."""
        from mnistlab.models import native

        return native.path(self.device)

    def decays(self, name: str) -> bool:
        return name.endswith("weight")  # every conv and linear kernel (L2 applies to those)

    def theta(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``[K, B, 2, 3]`` affine matrices for inputs ``[K, B, 1, 28, 28]`` in [0, 1]."""
        k, b = x.shape[:2]
        g = stack.conv_pool_relu(STNNet.normalise(x), p, "localization.0", self.memory_format)
        g = stack.conv_pool_relu(g, p, "localization.3", self.memory_format)
        h = g.reshape(k, b, -1)
        h = F.relu(stack.linear(h, p, "fc_loc.0"))
        return stack.linear(h, p, "fc_loc.2").view(k, b, 2, 3)

    def transform(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        theta = self.theta(p, x).reshape(k * b, 2, 3)
        flat = x.reshape(k * b, *x.shape[2:])
        grid = affine_grid(theta, *flat.shape[2:])
        out = F.grid_sample(flat, grid, align_corners=False, padding_mode="zeros")
        return out.view_as(x)

    def forward(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, step: stack.Step
    ) -> torch.Tensor:
        """Logits ``[K, B, 10]`` for images ``[K, B, 1, H, W]`` in [0, 1]."""
        if self.use_stn:
            x = self.transform(p, x)
        return self.classify(p, STNNet.normalise(x), step)

    def classify(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, step: stack.Step
    ) -> torch.Tensor:
        """The tutorial's classifier on normalised images ``[K, B, 1, H, W]``."""
        mf, k, b = self.memory_format, x.shape[0], x.shape[1]
        g = stack.conv_pool_relu(x, p, "classifier.conv1", mf)
        co = p["classifier.conv2.weight"].shape[1]
        drop = step.noise.keep((co,)) if step.noise is not None else None  # Dropout2d
        h = stack.conv_pool_relu(g, p, "classifier.conv2", mf, drop).reshape(k, b, -1)
        h = F.relu(stack.linear(h, p, "classifier.fc1"))
        if step.noise is not None and (m := step.noise.keep((h.shape[2],))) is not None:
            h = h * m
        return stack.linear(h, p, "classifier.fc2")
