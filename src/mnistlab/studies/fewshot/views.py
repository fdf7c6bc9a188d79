"""Augmented views of the few training images, through the frozen backbone.

The seed's rule — only the new output layer is trained — leaves the input side open: a head
fitted on the features of shifted, rotated and rescaled copies of its n images as well as on
the images themselves sees more of what a digit may look like, while the backbone stays
frozen and the validation and test images stay as they are. Each view is one fixed random warp
per image (``train/augment.py``, uint8 in and out), drawn from a generator keyed by the
strength, the view's number and the run's seed, and its features are cached like every other
feature: under the digest of the warped images, so the key holds the warp's parameters and
seed. Views are drawn only for the training images of the sizes up to ``views_up_to`` per
class: each view of a 90-per-class set costs a ResNet-50 pass over 4,500 images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mnistlab.data import load_mnist
from mnistlab.progress import Progress
from mnistlab.studies.fewshot.pool import FeaturePool, features
from mnistlab.train.augment import Augment, augment_batch

STRENGTHS = {
    "mild": Augment(shift=2.0, rotate=10.0, scale=0.1),
    "strong": Augment(shift=3.0, rotate=20.0, scale=0.2),
}


@dataclass(frozen=True)
class Option:
    """What a head is fitted on besides its images: ``count`` views of one ``strength``
    (count 0: the images alone)."""

    strength: str = "none"
    count: int = 0

    @property
    def label(self) -> str:
        if not self.count:
            return "no views"
        return f"{self.count} {self.strength} view{'s' if self.count > 1 else ''}"


def options(strengths: tuple[str, ...], views: int) -> list[Option]:
    """The search's view options, cheapest first (ties on validation go to the earlier)."""
    counts = sorted({1, views} - {0}) if views else []
    return [Option()] + [Option(s, c) for c in counts for s in strengths]


@dataclass
class Views:
    """Every view's features of the training rows ``rows`` (training-set indices, sorted)."""

    rows: torch.Tensor
    feats: dict[tuple[str, int], torch.Tensor]  # (strength, view number) → [len(rows), D]
    seconds: float

    def positions(self, idx: torch.Tensor) -> torch.Tensor:
        """Where training images ``idx`` (each in ``rows``) sit in every view's features."""
        return torch.searchsorted(self.rows, idx)

    def keys(self, option: Option) -> list[tuple[str, int]]:
        return [(option.strength, v) for v in range(option.count)]

    def of(self, idx: torch.Tensor, option: Option) -> list[torch.Tensor]:
        """The features of ``option``'s views of training images ``idx``."""
        pos = self.positions(idx)
        return [self.feats[key][pos] for key in self.keys(option)]


def view_images(images: torch.Tensor, spec: Augment, key: int) -> torch.Tensor:
    """One fixed random warp of every image (uint8 [N, H, W]), reproducible from ``key``."""
    g = torch.Generator().manual_seed(key)
    return augment_batch(images[None], [spec], [g], [len(images)])[0]


def extract(
    fp: FeaturePool,
    name: str,
    cfg,
    progress: Progress,
    data_dir=None,
) -> Views:
    """Features of every view the search may use, cached (see the module's docstring)."""
    t0 = time.perf_counter()
    sizes = [n for n in cfg.sizes if n <= cfg.views_up_to]
    rows = torch.unique(
        torch.cat([sp["sizes"][n] for sp in fp.splits.values() for n in sizes] or [_empty()])
    )
    feats: dict[tuple[str, int], torch.Tensor] = {}
    if len(rows) and cfg.views:
        x_train, _ = load_mnist("train", data_dir)
        images = x_train[rows]
        for strength in cfg.view_strengths:
            for v in range(cfg.views):
                key = 1_000_003 * cfg.seed + 7_919 * v + 104_729 * list(STRENGTHS).index(strength)
                feats[(strength, v)] = features(
                    name,
                    fp.weights.digest,
                    fp.extractor,
                    view_images(images, STRENGTHS[strength], key),
                    f"{strength} view {v + 1}",
                    cfg.extract_batch,
                    progress,
                )
    return Views(rows, feats, time.perf_counter() - t0)


def _empty() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long)
