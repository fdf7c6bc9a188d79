"""Two throughputs a GPU visit reports beside the CPU's: frozen ResNet-50 features (images/s,
the few-shot study's extraction: 224×224, ``auto`` precision) and the STN stack's training
(samples/s: five seeds as one stack, batch 64, the tutorial's SGD), each timed after a warm-up
with the device synchronised.

    python benchmarks/gpu_throughput.py [--device cuda] [-o throughput.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mnistlab.data import load_mnist
from mnistlab.models.backbones import build_model, resolve_weights
from mnistlab.models.stn import StackedSTN, STNNet, init_stn, to_input
from mnistlab.progress import Progress
from mnistlab.runs import environment
from mnistlab.train.engine import Member, Pool, Schedule, train_stack
from mnistlab.train.features import FrozenFeatures, resolve_precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def features(device: torch.device, n: int = 2048) -> dict:
    precision = resolve_precision("auto", device)
    weights = resolve_weights("resnet50", allow_download=False)
    body = FrozenFeatures(build_model("resnet50", weights), "fc", device, precision)
    images = load_mnist("test")[0][:n]
    body.extract(images[:256], batch_size=256, progress=Progress())  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    body.extract(images, batch_size=256, progress=Progress())
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": n, "precision": precision, "images_per_s": n / seconds}


def stn_stack(device: torch.device, k: int = 5, n: int = 12_800) -> dict:
    x, y = load_mnist("train")
    pool = Pool(x[:n], y[:n])
    members = [Member(s, init_stn(True, s).state_dict(), torch.arange(n), 0.01) for s in range(k)]

    def run(epochs: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        train_stack(
            StackedSTN(True, device), members, pool,
            Schedule(epochs=epochs, batch_size=64, optimizer="sgd"),
            trainable={n for n, _ in STNNet(True).named_parameters()}, device=device,
            prepare=to_input, progress=Progress(),
        )  # fmt: skip
        _sync(device)
        return time.perf_counter() - t0

    run(1)  # warm-up (kernels, allocator)
    seconds = run(2)
    return {"members": k, "batch": 64, "samples_per_s": 2 * n * k / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=2048, help="images to extract")
    ap.add_argument("--samples", type=int, default=12_800, help="training images per epoch")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    out = {"device": str(device), "environment": environment()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    out["resnet50_features"] = features(device, args.images)
    out["stn_stack"] = stn_stack(device, n=args.samples)
    print(json.dumps({k: v for k, v in out.items() if k != "environment"}, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
