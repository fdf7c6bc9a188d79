"""Elastic and zoom-out deformations (``elasticdeform``) and the 3× expanded MNIST.

Images stay uint8 ``[N, 28, 28]``: each deformation works on floats in [0, 1], clips, and
rounds back, so an expanded 180k training set costs 141 MB, not 565 MB of float32.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mnistlab.errors import CorruptFileError, MnistlabError
from mnistlab.io import cache_dir, finite, read_verified, write_verified

KINDS = ("original", "elastic", "zoom")
DEFORMATIONS = ("none", "elastic", "zoom")
_CACHE_FORMAT = 2  # bump when the deformation code (or its cache file) changes

_FIX = (
    "elasticdeform is installed but broken (its binary wheel was built against NumPy 1 and "
    "fails under NumPy 2). Fix: pip uninstall -y elasticdeform && "
    "pip install --no-binary elasticdeform elasticdeform==0.5.1"
)


def _elasticdeform():
    """Import elasticdeform, turning the NumPy-2 wheel failure into the fix to apply."""
    try:
        import elasticdeform
    except ImportError as exc:
        if "numpy" in str(exc).lower() or "multiarray" in str(exc):
            raise MnistlabError(_FIX) from None
        raise MnistlabError(
            "elasticdeform is not installed. Fix: pip install --no-binary elasticdeform "
            "elasticdeform==0.5.1"
        ) from None
    return elasticdeform


@dataclass(frozen=True)
class DeformParams:
    """Every parameter that shapes a deformed copy; all of it goes into the cache key.

    ``sigma`` is the standard deviation (pixels) of the displacement at each of the
    ``points``×``points`` control points. elasticdeform's README uses sigma=25 on a 200×300
    image; on 28×28 digits that tears strokes apart. 2.0 px (≈ the README's displacement
    relative to image size, 25/250 × 28 ≈ 2.8, rounded down) bends strokes visibly while every
    digit stays legible — see ``mnistlab data show --deform elastic`` and the sigma sweep in
    ``benchmarks/deform_sigma.py``.
    """

    sigma: float = 2.0
    points: int = 3
    order: int = 3
    zoom_factor: float = 4.0

    def __post_init__(self) -> None:
        # Checked here, where the numbers are used, so no caller can slip a NaN past.
        finite(self.sigma, "elastic sigma (pixels)", lo=0.0, hi=28.0)
        finite(self.zoom_factor, "zoom-out factor", lo=1.0, hi=28.0)
        if not 2 <= self.points <= 28 or not 0 <= self.order <= 5:
            raise MnistlabError(f"grid points must be 2–28 and spline order 0–5, got {self}")


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _elastic_chunk(args: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    images, displacements, order = args
    ed = _elasticdeform()
    out = np.empty(images.shape, dtype=np.uint8)
    for i, (img, disp) in enumerate(zip(images, displacements, strict=True)):
        out[i] = _to_uint8(ed.deform_grid(_to_float(img), disp, order=order, mode="constant"))
    return out


def _zoom_chunk(args: tuple[np.ndarray, float, int]) -> np.ndarray:
    images, zoom, order = args
    ed = _elasticdeform()
    # One transform for the whole chunk: axis=(1, 2) deforms each [28, 28] slice identically.
    zero = np.zeros((2, 3, 3))
    floats = _to_float(images)
    out = ed.deform_grid(floats, zero, order=order, mode="constant", axis=(1, 2), zoom=zoom)
    return _to_uint8(out)


def _check_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise MnistlabError(f"expected uint8 images [N, H, W], got {array.dtype} {array.shape}")
    return array


def _map_chunks(fn, chunks: list, workers: int) -> list[np.ndarray]:
    if workers <= 1 or len(chunks) <= 1:
        return [fn(c) for c in chunks]
    # fork: workers inherit the imported modules; the work is numpy/scipy only.
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(fn, chunks))


def _split(n: int, workers: int) -> list[slice]:
    n_chunks = max(1, min(n, workers * 4))
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def elastic(
    images: torch.Tensor | np.ndarray,
    seed: int,
    params: DeformParams = DeformParams(),
    workers: int | None = None,
) -> torch.Tensor:
    """One random-grid elastic copy of each image (uint8 in, uint8 out).

    This is elasticdeform's ``deform_random_grid``: a ``points``×``points`` grid of N(0, sigma²)
    displacements, cubic-spline interpolated. The displacements are drawn up front from one
    seeded generator (not numpy's global state) and handed to ``deform_grid``, so the result
    depends only on ``seed`` — not on the number of workers or on who else used numpy.random.
    """
    array = _check_images(images)
    rng = np.random.default_rng(seed)
    disp = rng.standard_normal((len(array), 2, params.points, params.points)) * params.sigma
    workers = default_workers() if workers is None else workers
    chunks = [(array[s], disp[s], params.order) for s in _split(len(array), workers)]
    return torch.from_numpy(np.concatenate(_map_chunks(_elastic_chunk, chunks, workers)))


def zoom_out(
    images: torch.Tensor | np.ndarray,
    factor: float = 4.0,
    order: int = 3,
    workers: int | None = None,
) -> torch.Tensor:
    """Shrink each image ``factor``× about its centre, the frame filled with background 0.

    Uses elasticdeform's own ``zoom`` option; in 0.5.1 ``zoom=0.25`` shrinks (checked by the
    ink test: a 4× zoom-out keeps about 1/16 of the ink).
    """
    array = _check_images(images)
    if factor <= 0:
        raise MnistlabError(f"zoom factor must be positive, got {factor}")
    workers = default_workers() if workers is None else workers
    chunks = [(array[s], 1.0 / factor, order) for s in _split(len(array), workers)]
    return torch.from_numpy(np.concatenate(_map_chunks(_zoom_chunk, chunks, workers)))


def deform_images(
    images: torch.Tensor | np.ndarray,
    kind: str,
    seed: int = 0,
    params: DeformParams = DeformParams(),
    workers: int | None = None,
) -> torch.Tensor:
    """Apply one named deformation (``none``, ``elastic`` or ``zoom``)."""
    if kind == "none":
        return torch.as_tensor(_check_images(images)).clone()
    if kind == "elastic":
        return elastic(images, seed, params, workers)
    if kind == "zoom":
        return zoom_out(images, params.zoom_factor, params.order, workers)
    raise MnistlabError(f"unknown deformation {kind!r}; choose one of: {', '.join(DEFORMATIONS)}")


@dataclass
class Expanded:
    """Originals + one elastic + one zoom-out copy of each, with the kind of every image."""

    images: torch.Tensor  # uint8 [3N, 28, 28]
    labels: torch.Tensor  # int64 [3N]
    kind: torch.Tensor  # int64 [3N], index into KINDS

    def __len__(self) -> int:
        return len(self.labels)


def expand_key(images: np.ndarray, seed: int, params: DeformParams) -> str:
    """Cache key hashing every input that shapes the expanded set."""
    ed_version = getattr(_elasticdeform(), "__version__", "0.5.1")
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(repr((sorted(asdict(params).items()), seed, ed_version, _CACHE_FORMAT)).encode())
    return h.hexdigest()[:24]


def expand(
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    seed: int = 0,
    params: DeformParams = DeformParams(),
    workers: int | None = None,
    cache: bool = True,
) -> Expanded:
    """60k → 180k (10k → 30k): originals, elastic copies, zoom-out copies, in that order.

    Cached on disk (a digest-verified file) under a key of the images' digest and every
    parameter, so the second call is a load; a cache file that does not verify is recomputed
    and rewritten.
    """
    array = _check_images(images)
    y = torch.as_tensor(labels, dtype=torch.int64)
    if len(y) != len(array):
        raise MnistlabError(f"{len(array)} images but {len(y)} labels")
    path = cache_dir() / "expand" / f"{expand_key(array, seed, params)}.npy"
    kind = torch.arange(3).repeat_interleave(len(array))
    deformed = _load_deformed(path, (2 * len(array), *array.shape[1:])) if cache else None
    if deformed is None:
        el = elastic(array, seed, params, workers)
        zo = zoom_out(array, params.zoom_factor, params.order, workers)
        deformed = torch.cat([el, zo])
        if cache:
            buf = io.BytesIO()
            np.save(buf, deformed.numpy(), allow_pickle=False)
            write_verified(path, buf.getvalue())
    return Expanded(torch.cat([torch.from_numpy(array.copy()), deformed]), y.repeat(3), kind)


def _load_deformed(path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached deformed copies, or None (absent, corrupt or of another shape)."""
    if not path.is_file():
        return None
    try:
        stored = np.load(io.BytesIO(read_verified(path)), allow_pickle=False)
    except (CorruptFileError, ValueError):
        return None  # the caller recomputes and overwrites it
    if stored.shape != shape or stored.dtype != np.uint8:
        return None
    return torch.from_numpy(stored)


def example_grid(
    images: torch.Tensor, kinds: Sequence[str], seed: int, params: DeformParams = DeformParams()
) -> np.ndarray:
    """Rows of [original | each requested deformation] for a figure, uint8 ``[n, k+1, H, W]``."""
    cols = [images] + [deform_images(images, k, seed, params, workers=1) for k in kinds]
    return torch.stack(cols, dim=1).numpy()
