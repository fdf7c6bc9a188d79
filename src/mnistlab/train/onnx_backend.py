"""ONNX Runtime as an engine of frozen fp32 features on a CPU (the optional extra ``onnx``).

It was ``auto``'s fp32 CPU engine until its advantage turned out to be torch page-faulting its
activations in every batch; with ``train/allocator.py`` the two run at about the same speed
with features equal to rounding (``benchmarks/onnx_bench.py``; README, Timings), so ``auto`` is
torch and this is ``--backend onnxruntime`` on request.

The fused fp32 body is exported once per (weights, input size, torch version) and kept in the
tool cache with its digest (``io.write_verified``); a damaged file is re-exported, never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from pathlib import Path

import torch
from torch import nn

from mnistlab.errors import CorruptFileError, MnistlabError
from mnistlab.io import cache_dir, read_verified, write_verified

INSTALL = "pip install 'mnistlab[onnx]' (onnxruntime, onnx, onnxscript)"


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _digest(body: nn.Module, size: int) -> str:
    """What the exported graph depends on: every tensor of the body, the input side, torch."""
    h = hashlib.sha256(f"{torch.__version__}|{size}".encode())
    for name, t in body.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _export(body: nn.Module, size: int) -> bytes:
    """The body as an ONNX graph with a dynamic batch dimension (torch's exporter)."""
    dummy = torch.zeros(2, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body.onnx"
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            body,
            (dummy,),
            str(path),
            input_names=["x"],
            output_names=["features"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,  # no exporter progress lines on the user's terminal
        )
        return path.read_bytes()


class OrtBody:
    """A frozen fp32 body run by ONNX Runtime: float ``[B, 3, S, S]`` → float ``[B, F]``."""

    def __init__(self, body: nn.Module, size: int):
        if not available():
            raise MnistlabError(f"ONNX Runtime is not installed; {INSTALL}")
        import onnxruntime as ort

        path = cache_dir() / "onnx" / f"{_digest(body, size)}.onnx.verified"
        try:
            graph = read_verified(path)
        except (OSError, CorruptFileError):  # missing or damaged: export (again)
            graph = _export(body, size)
            write_verified(path, graph)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"x": x.contiguous().numpy()})[0]
        return torch.from_numpy(out)
