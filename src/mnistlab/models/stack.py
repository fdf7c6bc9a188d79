"""K same-shaped models evaluated as one: stacked parameters and grouped layers.

Every model in the studies is small enough that a training step is dominated by per-operation
overhead, not arithmetic. Running K members of one architecture as one set of operations —
linear layers as one batched matmul, convolutions as one grouped convolution — pays that
overhead once. ``torch.func.vmap`` does the same rewriting automatically, but it cannot run a
convolution in channels-last layout (slower per STN step: ``benchmarks/engine_bench.py``,
README) and draws dropout masks for all members from one generator,
so a member's stream would depend on its neighbours. Hence these hand-vectorised layers.

Conventions: a stacked state maps the *solo* module's state-dict names to tensors with a
leading member dimension ``K``; activations are ``[K, B, ...]`` (member, row, features); convs
run in the grouped layout ``[B, K*C, H, W]``. Dropout masks come from :class:`Noise`, one
generator per member, so a member trains the same whichever other members share its stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mnistlab import compat
from mnistlab.models import native


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Solo state dicts (same keys and shapes) → one dict of ``[K, ...]`` tensors."""
    return {name: torch.stack([s[name] for s in states]) for name in states[0]}


def member_state(stacked: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Member ``k`` as a solo state dict (a copy on the CPU, loadable by the solo module)."""
    return {name: t[k].detach().cpu().clone() for name, t in stacked.items()}


class Noise:
    """Dropout keep-masks, one generator per member.

    ``rows[k]`` is how many real rows member ``k`` has in this step (0 when it sits the step
    out); only those are drawn, so the stream a member consumes never depends on the padding
    another member needs. ``rates[k]`` is member ``k``'s dropout probability.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        rows: Sequence[int],
        batch: int,
        rates: Sequence[float],
        device: torch.device,
    ):
        self.generators, self.rows, self.batch = generators, rows, batch
        self.rates, self.device = rates, device

    def keep(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Scaled keep-mask ``[K, batch, *shape]`` (None when no member drops anything)."""
        if not any(r > 0 and n > 0 for r, n in zip(self.rates, self.rows, strict=True)):
            return None
        masks = []
        for g, rate, n in zip(self.generators, self.rates, self.rows, strict=True):
            mask = torch.ones((self.batch, *shape), device=self.device)
            if rate > 0 and n > 0:
                draw = torch.rand((n, *shape), generator=g, device=self.device)
                mask[:n] = (draw >= rate).float().div_(1.0 - rate)
            masks.append(mask)
        return torch.stack(masks)


@dataclass
class Step:
    """What a stacked forward needs besides parameters and inputs."""

    train: bool
    noise: Noise | None = None  # dropout masks (training only)
    weight: torch.Tensor | None = None  # [K, B] 1 for real rows, 0 for padding (None: all real)
    active: torch.Tensor | None = None  # [K] members whose batch-norm statistics may move
    group: int = 1  # inputs come once per run of ``group`` consecutive members (same batches)


class _Linear(torch.autograd.Function):
    """``x @ Wᵀ + b`` per member with the products laid out for the CPU's batched GEMM:
    autograd's generic ``baddbmm`` backward multiplies a transposed input view (``xᵀ @ g``),
    much slower on the CPU than the same product as ``gᵀ @ x``, and ``W @ xᵀ`` beats
    ``x @ Wᵀ`` for the few-shot heads' shapes (README, The training engine)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return torch.bmm(w, x.transpose(1, 2)).transpose(1, 2) + b.unsqueeze(1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _key(name: str, leaf: str) -> str:
    return f"{name}.{leaf}" if name else leaf


def linear(x: torch.Tensor, p: dict[str, torch.Tensor], name: str = "") -> torch.Tensor:
    """``[K, B, I]`` → ``[K, B, O]`` with each member's own ``nn.Linear`` weights."""
    return _Linear.apply(x, p[_key(name, "weight")], p[_key(name, "bias")])


def to_groups(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``[K, B, C, H, W]`` → ``[B, K*C, H, W]`` (member-major channels)."""
    k, b, c, h, w = x.shape
    return x.transpose(0, 1).reshape(b, k * c, h, w).contiguous(memory_format=memory_format)


class _OneChannelConv(torch.autograd.Function):
    """A grouped convolution with one input channel per group whose *input* needs a gradient
    (the STN classifier's first layer, fed by the transformer), on the CPU: forward and kernel
    gradient in the channels-last layout, as elsewhere, but the input gradient through
    ``torch.nn.grad.conv2d_input``, which returns NCHW: oneDNN's channels-last input gradient
    for this shape is a poor kernel, while NCHW is slower for the forward and the kernel
    gradient (measured: ``benchmarks/stn_kernels.py``). Same products, another summation
    order."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, groups: int):
        ctx.save_for_backward(g, kernel)
        ctx.groups = groups
        return F.conv2d(g, kernel, bias, groups=groups)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g, kernel = ctx.saved_tensors
        need_g, need_w, need_b = ctx.needs_input_grad[:3]
        gi = gw = gb = None
        if need_g:
            gi = torch.nn.grad.conv2d_input(g.shape, kernel, grad, groups=ctx.groups)
        if need_w or need_b:
            gw, gb = compat.conv_weight_bias_grads(grad, g, kernel, ctx.groups, (need_w, need_b))
        return gi, gw, gb, None


def conv2d(
    g: torch.Tensor,
    p: dict[str, torch.Tensor],
    name: str,
    memory_format: torch.memory_format,
) -> torch.Tensor:
    """A grouped convolution: member ``k``'s kernels see only member ``k``'s channels."""
    w = p[f"{name}.weight"]
    k, o = w.shape[:2]
    kernel = w.reshape(k * o, *w.shape[2:]).contiguous(memory_format=memory_format)
    bias = p[f"{name}.bias"].reshape(k * o)
    if w.shape[2] == 1 and g.requires_grad and g.device.type == "cpu":
        return _OneChannelConv.apply(g, kernel, bias, k)
    return F.conv2d(g, kernel, bias, groups=k)


def pool_relu(g: torch.Tensor, ceil: bool = False) -> torch.Tensor:
    return F.relu(F.max_pool2d(g, 2, ceil_mode=ceil))


def conv_pool_relu(
    x: torch.Tensor,
    p: dict[str, torch.Tensor],
    name: str,
    memory_format: torch.memory_format,
    scale: torch.Tensor | None = None,
    ceil: bool = False,
) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(x) * scale, 2))`` per member: images ``[K, B, C, H, W]`` →
    ``[K, B, Co, H', W']``; ``scale`` ``[K, B, Co]`` is Dropout2d's mask (None: none). One
    native kernel where it covers the shapes (``models/native.py``: the STN's blocks on a CPU),
    torch's grouped layers elsewhere — there the result is a view of the grouped tensor, so the
    next block's :func:`to_groups` copies nothing."""
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    odd = (x.shape[-1] - w.shape[-1] + 1) % 2  # ceil pooling differs from floor only then
    if native.applies(x, w) and not (ceil and odd):
        return native.conv_pool_relu(x, w, b, scale)
    k, n = x.shape[:2]
    g = conv2d(to_groups(x, memory_format), p, name, memory_format)
    if scale is not None:
        g = g * scale.transpose(0, 1).reshape(n, -1, 1, 1)
    return pool_relu(g, ceil).unflatten(1, (k, -1)).transpose(0, 1)


def batch_norm(
    x: torch.Tensor, p: dict[str, torch.Tensor], name: str, step: Step, momentum: float = 0.1
) -> torch.Tensor:
    """``nn.BatchNorm1d`` per member on ``[K, B, F]``: batch statistics over each member's real
    rows in training (running statistics updated in place, as torch does), running ones in
    evaluation."""
    gamma, beta = p[f"{name}.weight"].unsqueeze(1), p[f"{name}.bias"].unsqueeze(1)
    rm, rv = p[f"{name}.running_mean"], p[f"{name}.running_var"]
    eps = 1e-5
    if not step.train:
        return (x - rm.unsqueeze(1)) * torch.rsqrt(rv.unsqueeze(1) + eps) * gamma + beta
    w = step.weight.unsqueeze(2) if step.weight is not None else torch.ones_like(x[..., :1])
    n = w.sum(1).clamp_min(1.0)  # [K, 1]
    mean = (x * w).sum(1) / n
    centred = x - mean.unsqueeze(1)
    var = (centred.square() * w).sum(1) / n  # biased, as used for normalising
    with torch.no_grad():
        unbiased = var * n / (n - 1).clamp_min(1.0)
        new_rm = rm * (1 - momentum) + mean.detach() * momentum
        new_rv = rv * (1 - momentum) + unbiased * momentum
        if step.active is not None:
            keep = step.active.unsqueeze(1)
            new_rm, new_rv = torch.where(keep, new_rm, rm), torch.where(keep, new_rv, rv)
        rm.copy_(new_rm)
        rv.copy_(new_rv)
        tracked = p.get(f"{name}.num_batches_tracked")
        if tracked is not None:
            tracked.add_(step.active.long() if step.active is not None else 1)
    return centred * torch.rsqrt(var.unsqueeze(1) + eps) * gamma + beta


class StackedLinear:
    """K members of one ``nn.Linear`` (a new output layer on frozen features).

    Members that share their batches (same seed and training set, another learning rate) can
    take their inputs once (``step.group`` > 1): G members' weights then act as one layer G
    times as wide — a third of the gathering and better-shaped products for a grid of 3 lrs.
    """

    groupable = True

    def decays(self, name: str) -> bool:
        return name == "weight"

    def forward(self, p: dict[str, torch.Tensor], x: torch.Tensor, step: Step) -> torch.Tensor:
        g = step.group
        if g == 1:
            return linear(x, p)
        k, c, i = p["weight"].shape
        wide = {
            "weight": p["weight"].reshape(k // g, g * c, i),
            "bias": p["bias"].reshape(k // g, g * c),
        }
        out = linear(x, wide)  # [K/G, B, G*C]
        return out.view(k // g, -1, g, c).transpose(1, 2).reshape(k, -1, c)

    def loss_and_grads(
        self,
        p: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        row_weight: torch.Tensor,
        step: Step,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy, logits and gradients in closed form (softmax − one-hot), without an
        autograd graph: for a linear head the graph costs more than the arithmetic.

        ``row_weight`` [K, B] weighs each row's loss (1/n for the member's real rows, 0 for
        padding), so the gradients are those of each member's mean loss.
        """
        with torch.no_grad():
            logits = self.forward(p, x, step)  # [K, B, C]
            logp = torch.log_softmax(logits, 2)
            ce = -logp.gather(2, y.unsqueeze(2)).squeeze(2)
            d = logp.exp_()
            d.scatter_add_(2, y.unsqueeze(2), torch.full_like(ce, -1.0).unsqueeze(2))
            d.mul_(row_weight.unsqueeze(2))
            k, c, i = p["weight"].shape
            g = step.group
            if g == 1:
                gw = torch.bmm(d.transpose(1, 2), x)
            else:  # back to one wide layer per run of G members sharing the inputs
                wide = d.view(k // g, g, -1, c).transpose(1, 2).reshape(k // g, -1, g * c)
                gw = torch.bmm(wide.transpose(1, 2), x).view(k, c, i)
            return ce, logits, {"weight": gw, "bias": d.sum(1)}

    def forward_shared(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, step: Step
    ) -> torch.Tensor:
        """All members on one shared batch ``[M, I]``: one matmul, no K copies of the inputs."""
        k, c, i = p["weight"].shape
        logits = x @ p["weight"].reshape(k * c, i).T + p["bias"].reshape(k * c)
        return logits.view(-1, k, c).transpose(0, 1)
