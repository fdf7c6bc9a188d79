"""Frozen ResNet-50 features on the CPU: torch (the project's path) vs ONNX Runtime.

    python benchmarks/onnx_bench.py [--images 512] [-o results/benchmarks/onnx.json]

The real pipeline: MNIST test images, upscaled and normalised per batch of 64 as
``train/features.py`` does, through the fused, channels-last, head-less ResNet-50 with the
imported ImageNet weights (random weights when none are cached: throughput does not depend on
them). Torch runs in fp32 and, on a CPU with bf16 matrix units, in the bf16 that ``auto`` picks
there; ONNX Runtime (the project's ``--backend onnxruntime``: CPU provider, the torch-exported
fp32 graph, as many intra-op threads as torch uses) runs in fp32 on the same preprocessed
batches. Reported: images per second each, the ratio, and the largest relative difference of
ORT's features from torch's fp32 ones. The project adopts ORT only if it beats the path it
would replace by ≥ 1.15× (the issue's rule).
"""

from __future__ import annotations

import argparse
import time

import torch

from mnistlab.data import load_mnist
from mnistlab.errors import MnistlabError
from mnistlab.models.backbones import ResolvedWeights, build_model, get_backbone, resolve_weights
from mnistlab.runs import environment, write_json
from mnistlab.train.devices import fast_cpu_bf16
from mnistlab.train.features import FrozenFeatures

CPU = torch.device("cpu")


def _torch_rate(frozen: FrozenFeatures, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    frozen(images[:8])  # warm-up: oneDNN primitives
    t = time.perf_counter()
    feats = frozen.extract(images, batch_size=64)
    return len(images) / (time.perf_counter() - t), feats


def _ort_rate(model, head: str, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The project's own ONNX Runtime path (``train/onnx_backend.py``: the exported graph is
    cached, so the first call here may export it; the timing starts after)."""
    frozen = FrozenFeatures(model, head, CPU, "fp32", backend="onnxruntime")
    frozen(images[:8])  # warm-up
    t = time.perf_counter()
    feats = frozen.extract(images, batch_size=64)
    return len(images) / (time.perf_counter() - t), feats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("-o", "--output", default="results/benchmarks/onnx.json")
    args = parser.parse_args()
    images = load_mnist("test")[0][: args.images]
    try:
        weights = resolve_weights("resnet50", allow_import=False, allow_download=False)
    except MnistlabError:
        weights = ResolvedWeights(None, "random", "v1.5", "random:0")
    model = build_model("resnet50", weights)
    head = get_backbone("resnet50").head
    result: dict = {"images": args.images, "weights": weights.source, "rates": {}}
    fp32, ref = _torch_rate(FrozenFeatures(model, head, CPU, "fp32"), images)
    result["rates"]["torch fp32"] = fp32
    if fast_cpu_bf16():
        result["rates"]["torch bf16"] = _torch_rate(
            FrozenFeatures(model, head, CPU, "bf16"), images
        )[0]
    rate, feats = _ort_rate(model, head, images)
    result["rates"]["onnxruntime fp32"] = rate
    result["max_relative_difference"] = float((feats - ref).abs().max() / ref.abs().max())
    best_torch = max(v for k, v in result["rates"].items() if k.startswith("torch"))
    result["ort_over_torch_fp32"] = rate / fp32
    result["ort_over_best_torch"] = rate / best_torch
    for k, v in result["rates"].items():
        print(f"{k}: {v:.1f} img/s")
    print(
        f"ORT / torch fp32 {result['ort_over_torch_fp32']:.2f}×, ORT / best torch path "
        f"{result['ort_over_best_torch']:.2f}×; features differ by ≤ "
        f"{result['max_relative_difference']:.1e} (relative to the largest)"
    )
    result["environment"] = environment()
    write_json(args.output, result)


if __name__ == "__main__":
    main()
