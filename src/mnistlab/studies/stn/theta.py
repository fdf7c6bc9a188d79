"""What a trained spatial transformer does, measured: θ decomposed, θ recorded every epoch on
fixed images, and θ ablations that tell a per-image warp from a global one.

θ maps output to input coordinates (``affine_grid``): a θ scale of 0.5 shows half the input's
extent, a 2× zoom-in; a rotation of +φ shows the input turned by −φ. Undoing a Z× zoom-out
therefore needs a θ scale of about 1/Z relative to the originals'.

The ablations answer "does it adapt per image?" by scoring the same trained STN with its θ
replaced — by the identity (no warp: what the classifier alone gives), by the mean θ of the
image's kind (one global warp per kind), and by the θ of another image of the same kind
(the warps' distribution kept, their pairing with the image broken). A gain that survives the
kind's mean θ is a global warp; one that needs the image's own θ is adaptive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from mnistlab.models.grid import affine_grid
from mnistlab.models.stack import Step, stack_states
from mnistlab.models.stn import StackedSTN, STNNet, to_input
from mnistlab.train.evaluate import predict

# Thresholds above which a deformation counts as "used" by the STN, as deviation from identity
# at the 90th percentile of test images: rotation 5°, scale 5 %, shear 0.05, translation 0.05
# (normalised units; 0.05 × 14 px ≈ 0.7 px).
THRESHOLDS = {"rotation": 5.0, "zoom": 0.05, "anisotropy": 0.05, "shear": 0.05, "translation": 0.05}
ABLATIONS = ("stn", "identity", "kind_mean", "shuffled")  # "stn": the image's own θ
EVAL_ROWS = 2048


def decompose_theta(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split θ = [A | t] with A = R(rotation) · Shear(shear) · diag(scale_x, scale_y)."""
    a, b = theta[:, 0, 0], theta[:, 0, 1]
    c, d = theta[:, 1, 0], theta[:, 1, 1]
    scale_x = torch.sqrt(a * a + c * c)
    rotation = torch.atan2(c, a)
    m = (a * b + c * d) / scale_x  # R^T A = [[sx, m], [0, sy]]
    scale_y = (a * d - b * c) / scale_x
    return {
        "rotation_deg": torch.rad2deg(rotation),
        "scale_x": scale_x,
        "scale_y": scale_y,
        "shear": m / scale_y,
        "tx": theta[:, 0, 2],
        "ty": theta[:, 1, 2],
    }


def compose_theta(rotation_deg, scale_x, scale_y, shear, tx, ty) -> torch.Tensor:
    """Inverse of :func:`decompose_theta` (used by tests and synthetic checks)."""
    r = math.radians(rotation_deg)
    rot = torch.tensor([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    sh = torch.tensor([[1.0, shear], [0.0, 1.0]])
    a = rot @ sh @ torch.diag(torch.tensor([float(scale_x), float(scale_y)]))
    return torch.cat([a, torch.tensor([[float(tx)], [float(ty)]])], dim=1).unsqueeze(0)


def iso_scale(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The isotropic θ scale √|det A| (1 = no zoom; < 1 magnifies)."""
    return torch.sqrt(parts["scale_x"].abs() * parts["scale_y"].abs())


def deformation_stats(parts: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per deformation type: median and 90th-percentile deviation from identity."""
    iso = iso_scale(parts)
    dev = {
        "rotation": parts["rotation_deg"].abs(),
        "zoom": (iso - 1).abs(),
        "anisotropy": (parts["scale_x"] / parts["scale_y"] - 1).abs(),
        "shear": parts["shear"].abs(),
        "translation": torch.sqrt(parts["tx"] ** 2 + parts["ty"] ** 2),
    }
    out = {}
    for name, values in dev.items():
        q = torch.quantile(values.double(), torch.tensor([0.5, 0.9], dtype=torch.double))
        out[name] = {
            "median": float(q[0]),
            "p90": float(q[1]),
            "max": float(values.max()),
            "threshold": THRESHOLDS[name],
            "learned": bool(q[1] > THRESHOLDS[name]),
        }
    out["zoom"]["mean_scale"] = float(iso.mean())
    out["rotation"]["mean_signed_deg"] = float(parts["rotation_deg"].mean())
    return out


def largest_deformations(parts: dict[str, torch.Tensor], k: int = 6) -> dict[str, list[int]]:
    """Per deformation type, the ``k`` test images the STN deforms most that way."""
    scores = {
        "rotation": parts["rotation_deg"].abs(),
        "zoom": iso_scale(parts).log().abs(),
        "shear": parts["shear"].abs(),
        "translation": torch.sqrt(parts["tx"] ** 2 + parts["ty"] ** 2),
    }
    return {name: torch.argsort(v, descending=True)[:k].tolist() for name, v in scores.items()}


def thetas_and_outputs(
    model: STNNet, images: torch.Tensor, device: torch.device, batch: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ for every image, and the STN's warped images as uint8 (for figures)."""
    warped, thetas = predict(
        model, images, lambda x: to_input(x, device), batch=batch, call=model.transform
    )
    return thetas, (warped.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------ θ against what was drawn


def _wrap(deg: torch.Tensor) -> torch.Tensor:
    return torch.remainder(deg + 180.0, 360.0) - 180.0


def _residual(drawn: torch.Tensor, residual: torch.Tensor, learned: torch.Tensor) -> dict:
    """How much of a drawn distortion the transformer takes back: the spread of what is left
    after it (``residual``) against the spread drawn (1 − ratio: the share undone; 0 when the
    transformer ignores it, 1 when it takes every image back to one pose)."""
    d, r = drawn.double(), residual.double()
    corr = float(torch.corrcoef(torch.stack([learned.double(), d]))[0, 1])
    return {
        "drawn_sd": float(d.std()),
        "residual_sd": float(r.std()),
        "undone": 1.0 - float(r.std() / d.std()),
        "corr_learned_drawn": corr if math.isfinite(corr) else 0.0,
    }


def undoing(parts: dict[str, torch.Tensor], drawn: dict[str, torch.Tensor]):
    """θ statistics against what was drawn per test image: rotation (R, RTS) and scale (RTS,
    P, E). θ maps output to input, so undoing a drawn rotation of +a needs a learned rotation
    of −a (residual a + learned) and undoing a drawn scale s needs a θ scale ∝ s (residual
    log θ-scale − log s). Returns (statistics, per-image learned/drawn for the figure)."""
    iso = torch.sqrt(parts["scale_x"].abs() * parts["scale_y"].abs())
    stats: dict[str, Any] = {"mean_scale": float(iso.mean())}
    points: dict[str, Any] = {}
    if "angle_deg" in drawn:
        a, learned = drawn["angle_deg"], parts["rotation_deg"]
        stats["rotation"] = _residual(a, _wrap(a + learned), learned)
        points["rotation"] = (a.numpy(), learned.numpy())
    if "scale" in drawn:
        s = drawn["scale"]
        stats["scale"] = _residual(s.log(), iso.log() - s.log(), iso.log())
        points["scale"] = (s.numpy(), iso.numpy())
    return stats, points


# ------------------------------------------------------------------ θ every epoch


class ThetaProbe:
    """θ statistics of every member on fixed images, per kind, after each epoch — the engine's
    ``measure`` hook, so they live in the history and survive a resume.

    Columns per kind: ``theta_scale_<kind>`` (mean √|det A|), ``theta_scale_sd_<kind>`` (its
    spread over the images: 0 for a warp that ignores the image), ``theta_rot_<kind>`` (mean
    |rotation|, degrees) and ``theta_shift_<kind>`` (mean |translation|, normalised units).
    """

    def __init__(self, images: torch.Tensor, kinds: torch.Tensor, names: Sequence[str], device):
        self.x = to_input(images, device)
        self.kinds, self.names = kinds.to(device), tuple(names)

    def __call__(self, stack: Any) -> list[dict[str, float]]:
        arch, p = stack.arch, stack.tensors
        k = len(stack)
        theta = torch.cat(
            [
                arch.theta(p, part.unsqueeze(0).expand(k, *part.shape))
                for part in self.x.split(1024)
            ],
            dim=1,
        )  # [K, M, 2, 3]
        rows: list[dict[str, float]] = [{} for _ in range(k)]
        for i in range(k):
            parts = decompose_theta(theta[i])
            iso = iso_scale(parts)
            shift = torch.sqrt(parts["tx"] ** 2 + parts["ty"] ** 2)
            for j, name in enumerate(self.names):
                mask = self.kinds == j
                rows[i].update(
                    {
                        f"theta_scale_{name}": float(iso[mask].mean()),
                        f"theta_scale_sd_{name}": float(iso[mask].std()),
                        f"theta_rot_{name}": float(parts["rotation_deg"][mask].abs().mean()),
                        f"theta_shift_{name}": float(shift[mask].mean()),
                    }
                )
        return rows


def probe_set(kinds: torch.Tensor, per_kind: int) -> torch.Tensor:
    """Indices of the first ``per_kind`` test images of every kind (fixed, no draw)."""
    picks = [torch.nonzero(kinds == k).flatten()[:per_kind] for k in kinds.unique().tolist()]
    return torch.cat(picks)


def magnification(rows: list[dict[str, Any]], zoom: str = "zoom", ref: str = "original") -> float:
    """How much more a member magnifies ``zoom`` images than ``ref`` ones, averaged (on a
    log scale) over ``rows`` — its scored epochs. A full undo of a Z× zoom-out is Z."""
    logs = [math.log(r[f"theta_scale_{ref}"] / r[f"theta_scale_{zoom}"]) for r in rows]
    return math.exp(sum(logs) / len(logs))


# ------------------------------------------------------------------ θ ablations


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``x`` [K, B, 1, H, W] sampled through θ [K, B, 2, 3] (before normalisation)."""
    k, b = x.shape[:2]
    flat = x.reshape(k * b, *x.shape[2:])
    grid = affine_grid(theta.reshape(k * b, 2, 3), *flat.shape[2:])
    return F.grid_sample(flat, grid, align_corners=False, padding_mode="zeros").view_as(x)


def _all_thetas(arch: StackedSTN, p: dict, x: torch.Tensor) -> torch.Tensor:
    k = next(iter(p.values())).shape[0]
    return torch.cat(
        [arch.theta(p, part.unsqueeze(0).expand(k, *part.shape)) for part in x.split(EVAL_ROWS)],
        dim=1,
    )


def _variant_thetas(theta: torch.Tensor, kinds: torch.Tensor, perm: torch.Tensor) -> dict:
    """θ of every ablation (None: no warp): the kind's mean θ, or θ shuffled in the kind."""
    mean = torch.empty_like(theta)
    for k in kinds.unique().tolist():
        mask = kinds == k
        mean[:, mask] = theta[:, mask].mean(1, keepdim=True)
    return {"stn": theta, "identity": None, "kind_mean": mean, "shuffled": theta[:, perm]}


def shuffle_within(kinds: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation of the test images that keeps every image within its kind."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(len(kinds))
    for k in kinds.unique().tolist():
        idx = torch.nonzero(kinds == k).flatten()
        perm[idx] = idx[torch.randperm(len(idx), generator=gen)]
    return perm


@torch.no_grad()
def ablation_accuracy(
    states: list[dict[str, torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor,
    kinds: torch.Tensor,
    *,
    device: torch.device,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Per ablation, ``[K, kinds]`` accuracy of each of the STNs ``states`` (one per seed,
    scored together as one stack) on the test images, θ replaced as :data:`ABLATIONS` say."""
    arch = StackedSTN(True, device)
    p = {n: t.to(device) for n, t in stack_states(states).items()}
    x, y, kinds = to_input(images, device), labels.to(device), kinds.to(device)
    theta = _all_thetas(arch, p, x)
    perm = shuffle_within(kinds.cpu(), seed).to(device)
    nk, k = int(kinds.max()) + 1, len(states)
    onehot = F.one_hot(kinds, nk).float()
    out = {}
    for name, th in _variant_thetas(theta, kinds, perm).items():
        hits = torch.zeros(k, nk, device=device)
        for lo in range(0, len(y), EVAL_ROWS):
            part = x[lo : lo + EVAL_ROWS].unsqueeze(0).expand(k, -1, -1, -1, -1)
            warped = part if th is None else _warp(part, th[:, lo : lo + EVAL_ROWS])
            logits = arch.classify(p, STNNet.normalise(warped), Step(False))
            hit = (logits.argmax(2) == y[lo : lo + EVAL_ROWS]).float()
            hits += hit @ onehot[lo : lo + EVAL_ROWS]
        out[name] = (hits / onehot.sum(0)).cpu()
    return out
