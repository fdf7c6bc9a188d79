"""The IDX file format of the MNIST distribution: parse and write, with clear errors.

Format (LeCun's page): 2 zero bytes, a type byte (0x08 = uint8), a dimension count, then one
big-endian uint32 per dimension, then the C-order data.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from mnistlab.errors import MnistlabError

_UBYTE = 0x08


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a uint8 array; malformed input raises :class:`MnistlabError`."""
    if len(data) < 4:
        raise MnistlabError(f"{name}: not an IDX file (only {len(data)} bytes)")
    zero1, zero2, dtype, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or dtype != _UBYTE or not 1 <= ndim <= 4:
        raise MnistlabError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()} "
            "(expected 0x00000801 for labels or 0x00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistlabError(f"{name}: IDX header truncated ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise MnistlabError(
            f"{name}: wrong length: header says shape {tuple(shape)} = {expected} bytes of data, "
            f"file has {len(data) - header} (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array (used to store converted data in the cache)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer supports uint8 only, got {array.dtype}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def read_idx(path: Path | str) -> np.ndarray:
    """Read a plain or ``.gz`` IDX file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except OSError as exc:  # includes gzip.BadGzipFile
        raise MnistlabError(f"{path}: cannot read: {exc}") from None
    except (EOFError, zlib.error) as exc:
        raise MnistlabError(f"{path}: corrupt gzip stream: {exc}") from None
    return parse_idx(raw, str(path))
