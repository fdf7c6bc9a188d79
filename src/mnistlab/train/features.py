"""Frozen-feature protocol: preprocessing per batch, mixed-precision extraction, a disk cache.

The backbone is frozen and there is no augmentation, so its penultimate output for an image
never changes: computing it once and training the head on stored features makes every epoch,
size and seed nearly free (the PyTorch transfer-learning tutorial instead re-runs the backbone
every epoch — kept as ``--no-cache`` for comparison).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mnistlab.errors import CorruptFileError, MnistlabError
from mnistlab.io import atomic_write_bytes, atomic_write_text
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress
from mnistlab.train.devices import fast_cpu_bf16

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "onnxruntime")


def preprocessing_spec(size: int) -> str:
    """Everything preprocessing does, as text: part of every feature-cache key."""
    return f"uint8/255|bilinear{size}|grey->3ch|imagenet{IMAGENET_MEAN}{IMAGENET_STD}"


def preprocess(images: torch.Tensor, device: torch.device, size: int = 224) -> torch.Tensor:
    """uint8 ``[B, 28, 28]`` → normalised float ``[B, 3, size, size]`` (channels_last), per batch.

    Grey is repeated to three channels (equivalently one could sum conv1's weights over its
    input channels); upscaling is bilinear. Only one batch ever exists at 224×224.
    """
    x = images.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x.expand(-1, 3, -1, -1) - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp16 on CUDA; bf16 on a CPU with bf16 matrix instructions (faster than fp32
    there at the same accuracy: README), fp32 on any other CPU (bf16 is emulated there, far
    slower) and on MPS."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and fast_cpu_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        return "bf16"  # CPU autocast supports bf16 only
    return precision


def resolve_backend(backend: str, precision: str, device: torch.device) -> str:
    """``auto``: torch. ONNX Runtime was the fp32 CPU default while torch page-faulted its
    activations in every batch; with ``train/allocator.py`` the two run at about the same
    speed (README, Timings), under the gain that would pay for a second engine. An explicit
    ``onnxruntime`` stays available; one it cannot serve is one clear error."""
    from mnistlab.train import onnx_backend

    if backend == "auto":
        return "torch"
    fits = device.type == "cpu" and precision == "fp32"
    if backend == "onnxruntime" and not fits:
        raise MnistlabError(
            f"--backend onnxruntime runs fp32 on a CPU only (here: {precision} on {device.type});"
            " use --precision fp32 --device cpu, or --backend torch"
        )
    if backend == "onnxruntime" and not onnx_backend.available():
        raise MnistlabError(
            f"--backend onnxruntime: ONNX Runtime is not installed; {onnx_backend.INSTALL}"
        )
    return backend


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class FrozenFeatures:
    """A frozen backbone (head removed) as a function uint8 images → float32 features."""

    def __init__(
        self,
        model: nn.Module,
        head_path: str,
        device: torch.device,
        precision: str,
        size: int = 224,
        backend: str = "torch",
    ):
        import copy

        self.body = copy.deepcopy(model).to(device).eval()
        self.body.requires_grad_(False)
        parent, _, attr = head_path.rpartition(".")
        setattr(self.body.get_submodule(parent) if parent else self.body, attr, nn.Identity())
        self.body = _fuse_conv_bn(self.body).to(memory_format=torch.channels_last)
        self.device, self.precision, self.size = device, precision, size
        self.ort = None
        if backend == "onnxruntime":
            from mnistlab.train.onnx_backend import OrtBody

            self.ort = OrtBody(self.body, size)

    @property
    def engine(self) -> str:
        """What computed the features, for the feature-cache key (torch keeps its old keys)."""
        if self.ort is None:
            return "torch"
        from mnistlab.train.onnx_backend import version

        return f"onnxruntime-{version()}"

    @torch.no_grad()  # not inference_mode: the uncached path feeds these into a trained head
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images, self.device, self.size)
        if self.ort is not None:
            return self.ort(x)
        with autocast(self.precision, self.device):
            out = self.body(x)
        return out.float()

    def extract(
        self,
        images: torch.Tensor,
        batch_size: int = 64,
        progress: Progress | None = None,
        description: str = "features",
    ) -> torch.Tensor:
        task = (progress or default_progress()).task(description, len(images))
        parts = []
        for i in range(0, len(images), batch_size):
            parts.append(self(images[i : i + batch_size]).cpu())
            task.advance(min(batch_size, len(images) - i))
        task.done()
        return torch.cat(parts).clone()  # a normal tensor (not an inference tensor)


def _fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold eval-mode batch norms into the preceding convolutions (torch.fx): the same function
    with fewer passes over memory — ~10 % faster ResNet-50 extraction on this CPU."""
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception:  # an untraceable model: keep it as it is
        return model


def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def feature_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def cached_features(
    folder: Path, key: str, compute: Callable[[], torch.Tensor], progress: Progress | None = None
) -> tuple[torch.Tensor, bool]:
    """Load features stored under ``key`` if their digest checks out, else compute and store.

    Returns (features, loaded_from_cache). The array is a plain ``.npy`` file (readable by any
    numpy) with its SHA-256 in a ``.sha256`` sidecar written after it; a missing, unreadable
    or mismatching sidecar — itself possibly damaged — means "recompute", never a crash.
    """
    data_path, sum_path = folder / f"{key}.npy", folder / f"{key}.sha256"
    if data_path.is_file():
        try:
            raw = data_path.read_bytes()
            want = sum_path.read_bytes().decode("ascii").strip()
            if hashlib.sha256(raw).hexdigest() != want:
                raise CorruptFileError(str(data_path), "SHA-256 mismatch with its sidecar")
            return torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False)), True
        except (OSError, UnicodeDecodeError, ValueError, CorruptFileError) as exc:
            why = exc if isinstance(exc, CorruptFileError) else f"{data_path}: {exc}"
            (progress or default_progress()).message(f"feature cache: {why}; recomputing")
    feats = compute()
    buf = io.BytesIO()
    np.save(buf, feats.numpy().astype(np.float32), allow_pickle=False)
    raw = buf.getvalue()
    atomic_write_bytes(data_path, raw)
    atomic_write_text(sum_path, hashlib.sha256(raw).hexdigest() + "\n")
    return feats, False
