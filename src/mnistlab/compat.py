"""Every use of a dependency's private or unstable API, in one place.

Each is taken because its public counterpart was measured slower (README, design decisions),
each is looked up once per process, and each has a public fallback that gives the same numbers
(``tests/test_compat.py``) in case a release renames or drops it:

* ``torch._fused_adam_`` — the kernel behind ``Adam(fused=True)``, called on a stack's member
  rows (the public class walks its parameter groups in Python every step); fallback: Adam's
  update in public tensor operations, the formula of ``torch.optim.Adam``;
* ``torch.ops.aten.convolution_backward`` (positional arguments) — the grouped convolution's
  kernel and bias gradients in one call; fallback: ``torch.nn.grad.conv2d_weight`` and a sum;
* ``numpy._core.multiarray._reconstruct`` (``numpy.core`` before NumPy 2) — what a pickled
  ndarray names; the restricted unpickler maps both paths to whichever exists;
* Optuna's ``RDBStorage`` heartbeat methods — a shared tuning's trials beat while they run
  (Optuna starts its own heartbeat thread only inside ``study.optimize``); without them the
  trials simply do not beat (a dead worker's trial is then failed by the timeout only).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch


@functools.cache
def fused_adam() -> Callable[..., None] | None:
    """``torch._fused_adam_`` where this torch has it (CPU and CUDA), else None."""
    return getattr(torch, "_fused_adam_", None)


def adam_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    fused: bool = True,
) -> None:
    """One Adam update (coupled L2) of ``params`` in place; ``steps`` already incremented."""
    kernel = fused_adam() if fused else None
    if kernel is not None:
        kernel(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1,
            beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False,
        )  # fmt: skip
        return
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        n = float(step)
        bias1, bias2 = 1 - beta1**n, 1 - beta2**n
        denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bias1)


def conv_weight_bias_grads(
    grad: torch.Tensor,
    x: torch.Tensor,
    kernel: torch.Tensor,
    groups: int,
    need: tuple[bool, bool],
    *,
    private: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Kernel and bias gradients of a stride-1, unpadded grouped ``conv2d``."""
    need_w, need_b = need
    aten = getattr(torch.ops.aten, "convolution_backward", None) if private else None
    if aten is not None:
        _, gw, gb = aten(
            grad, x, kernel, [kernel.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0],
            groups, [False, need_w, need_b],
        )  # fmt: skip
        return gw, gb
    gw = torch.nn.grad.conv2d_weight(x, kernel.shape, grad, groups=groups) if need_w else None
    gb = grad.sum((0, 2, 3)) if need_b else None
    return gw, gb


@functools.cache
def numpy_reconstruct() -> Callable[..., Any]:
    """What a pickled ndarray calls to rebuild itself, under NumPy 2's or NumPy 1's path."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def heartbeat(storage: Any, study_name: str, number: int) -> Callable[[], None] | None:
    """A function that records one heartbeat of trial ``number`` in ``storage``, or None
    when this Optuna's storage has no heartbeat methods."""
    needed = ("get_study_id_from_name", "get_trial_id_from_study_id_trial_number")
    if not all(hasattr(storage, n) for n in (*needed, "record_heartbeat")):
        return None
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return functools.partial(storage.record_heartbeat, trial_id)
