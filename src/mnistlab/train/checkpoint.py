"""Checkpoints: one dict with everything needed to rebuild and resume, saved atomically.

Loaded with ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain Python
values only, so loading one never executes code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import MnistlabError
from mnistlab.runs import atomic_write_bytes


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MnistlabError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, not a checkpoint at all
        raise MnistlabError(f"cannot load checkpoint {path}: {type(exc).__name__}") from None
