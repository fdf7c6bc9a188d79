"""Checkpoints: one self-verifying file per checkpoint, loaded without executing code.

A checkpoint is ``torch.save`` bytes inside :mod:`mnistlab.io`'s digest container, loaded with
``torch.load(weights_only=True)``: tensors and plain Python values only. A flipped bit anywhere
— header, pickle or tensor data — fails the digest, so a damaged checkpoint is never resumed
from (it once loaded silently and the resumed run ended 1.3 points lower).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mnistlab import io as mio
from mnistlab.errors import CorruptFileError, MnistlabError


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return mio.write_verified(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """The verified checkpoint at ``path`` (CorruptFileError if it does not verify)."""
    path = Path(path)
    if not path.is_file():
        raise MnistlabError(f"checkpoint {path} does not exist")
    payload = mio.read_verified(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # verified bytes that are still not a checkpoint: a foreign file
        raise CorruptFileError(str(path), f"not a checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise CorruptFileError(str(path), "not a checkpoint dict")
    return state


def rng_states() -> dict[str, Any]:
    """The global CPU and CUDA generators' states (the engine's own generators are saved with
    the stack; these cover anything else a model might draw from)."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
