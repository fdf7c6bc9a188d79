"""The few-shot studies' config and data draws, shared by both protocols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mnistlab.config import SEED_MAX, check_device, flag_of, option, validate
from mnistlab.data import COUNTS, balanced_subset
from mnistlab.errors import MnistlabError
from mnistlab.models.backbones import get_backbone
from mnistlab.train.features import BACKENDS, PRECISIONS, resolve_backend


@dataclass(frozen=True)
class FewshotConfig:
    """Defaults: Adam, lr 3e-3, 100 epochs, batch 32 — from ``benchmarks/fewshot_sweep.py``:
    on ResNet-50 features Adam 3e-3 was within 0.1 point of the best lr at every size, SGD
    trailed by 1–3 points, and accuracy moved < 0.5 point after epoch 60."""

    backbones: tuple[str, ...] = option(("resnet50", "vgg19"), "frozen ImageNet backbones", cli="")
    sizes: tuple[int, ...] = option(
        (10, 30, 50, 70, 90), "training images per class", lo=1, hi=10**6
    )
    seeds: int = option(5, "repeats, each a different balanced draw", lo=1, hi=1000)
    seed: int = option(0, "first seed; repeats use seed, seed+1, …", lo=0, hi=SEED_MAX)
    epochs: int = option(100, "epochs of head training", unit="epochs", lo=1, hi=100_000)
    lr: float = option(3e-3, "Adam learning rate of the reported head", lo=0, hi=10, open_lo=True)
    batch_size: int = option(32, "mini-batch size", unit="images", lo=1, hi=65_536)
    val_per_class: int = option(
        20, "validation images per class (honest protocol)", cli="", lo=1, hi=10**6
    )
    lr_grid: tuple[float, ...] = option(
        (1e-3, 3e-3, 1e-2),
        "learning rates the honest protocol chooses from",
        cli="",
        lo=0.0,
        hi=10.0,
        open_lo=True,
    )
    weights: tuple[tuple[str, str], ...] = option((), "(backbone, path|random) overrides", cli="")
    precision: str = option("auto", "feature extraction arithmetic", choices=PRECISIONS)
    backend: str = option(
        "auto",
        "frozen-feature engine (auto: torch; onnxruntime: fp32 on a CPU, the onnx extra)",
        choices=BACKENDS,
    )
    cache: bool = option(True, "cache frozen features on disk", cli="")
    test_limit: int | None = option(
        None, "use the first N test images", lo=1, hi=sum(COUNTS["test"])
    )
    image_size: int = option(
        224, "side the digits are scaled up to", unit="px", cli="", lo=16, hi=1024
    )
    extract_batch: int = option(32, "images per feature-extraction batch", cli="", lo=1, hi=4096)
    device: str = option("auto", "auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps")

    def __post_init__(self) -> None:
        if not self.backbones:
            raise MnistlabError("no backbone given")
        for name in self.backbones:
            get_backbone(name)
        if len(set(self.backbones)) != len(self.backbones):
            raise MnistlabError(f"a backbone is listed twice: {list(self.backbones)}")
        validate(self)
        if len(set(self.sizes)) != len(self.sizes):
            raise MnistlabError(f"{flag_of(self, 'sizes')} lists a size twice: {list(self.sizes)}")
        need = max(self.sizes) + self.val_per_class
        if need > min(COUNTS["train"]):
            digit = COUNTS["train"].index(min(COUNTS["train"]))
            raise MnistlabError(
                f"size {max(self.sizes)} per class + {self.val_per_class} validation needs "
                f"{need} images of every digit; digit {digit} has only {min(COUNTS['train'])}"
            )
        for name, _ in self.weights:
            if name != "*":
                get_backbone(name)
        check_device(self.device)
        if self.backend == "onnxruntime":  # what can be told before the device is resolved
            precision = "fp32" if self.precision == "auto" else self.precision
            kind = "cpu" if self.device == "auto" else self.device.partition(":")[0]
            resolve_backend("onnxruntime", precision, torch.device(kind))


def seed_splits(labels: torch.Tensor, cfg: FewshotConfig) -> dict[int, dict[str, Any]]:
    """Per seed: a validation split, then nested balanced training sets for every size."""
    out = {}
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        val = balanced_subset(labels, cfg.val_per_class, seed=seed + 100_000)
        sizes = {n: balanced_subset(labels, n, seed=seed, exclude=val) for n in cfg.sizes}
        out[seed] = {"val": val, "sizes": sizes}
    return out
