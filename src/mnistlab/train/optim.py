"""SGD and Adam for a stack: one learning rate and one L2 weight per member.

``torch.optim`` keeps one learning rate per parameter *tensor*; a stack holds K members in one
buffer, so a grid of learning rates needs the update dispatched by hand. Adam runs PyTorch's
fused kernel (``torch._fused_adam_``, the one behind ``Adam(fused=True)``, through
:mod:`mnistlab.compat`) on each member's row of the buffer, one call per distinct (learning
rate, L2 weight): one pass over parameters, gradient and moments instead of ~8, the same
numbers as ``torch.optim.Adam``. L2 is Adam's *coupled* weight decay (λ·w added to the gradient, the
gradient of λ/2·‖w‖²) and applies to the tensors the architecture names (weight matrices),
which the stack lays out first in each row so that they form one contiguous slice.

A member outside ``active`` sits the step out entirely — parameters, moments and step count
unchanged — so a member whose epoch ended early, or that stopped early, evolves exactly as it
would alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from mnistlab import compat

OPTIMIZERS = ("sgd", "adam")


class StackedOptimizer:
    def __init__(
        self,
        flat: torch.Tensor,
        *,
        kind: str,
        lr: Sequence[float],
        weight_decay: Sequence[float],
        n_decay: int,
        momentum: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        column_scale: torch.Tensor | None = None,
    ):
        """``flat`` [K, P] parameters whose first ``n_decay`` columns take L2; per-member
        ``lr`` and ``weight_decay``; ``column_scale`` [P] or [K, P] multiplies each parameter's
        SGD step (e.g. a slower localisation network), None: 1 everywhere."""
        if kind not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {kind!r}")
        if column_scale is not None and kind != "sgd":
            raise ValueError("per-parameter learning-rate scales are implemented for SGD only")
        self.column_scale = column_scale
        self.flat, self.kind, self.n_decay = flat, kind, n_decay
        self.lr, self.weight_decay = list(lr), list(weight_decay)
        self.momentum, self.betas, self.eps = momentum, betas, eps
        k = flat.shape[0]
        self.grad = torch.zeros_like(flat)  # the stack writes each step's gradient here
        self.steps = [torch.zeros((), dtype=torch.float32, device=flat.device) for _ in range(k)]
        self._calls: dict[tuple[int, ...], list[tuple[dict, list]]] = {}
        self.lr_factor = 1.0  # a schedule's multiplier for the current epoch
        self.state: dict[str, torch.Tensor] = {}
        if kind == "adam":
            self.state = {"m": torch.zeros_like(flat), "v": torch.zeros_like(flat)}
        elif momentum:
            self.state = {"buf": torch.zeros_like(flat)}
        dev = flat.device
        self._lr_t = torch.tensor(self.lr, device=dev).unsqueeze(1)
        decay_mask = torch.zeros(flat.shape[1], device=dev)
        decay_mask[:n_decay] = 1
        decay = torch.tensor(self.weight_decay, device=dev).unsqueeze(1) * decay_mask
        self._decay = decay if bool((decay != 0).any()) else None

    @torch.no_grad()
    def step(self, active: torch.Tensor, members: tuple[int, ...]) -> None:
        """One update of ``members`` (known on the host, so no device sync) from the gradient
        in ``self.grad``; ``active`` is the same set as a bool ``[K]`` on the device."""
        everyone = len(members) == len(self.steps)
        for k in members:
            self.steps[k] += 1
        if self.kind == "adam":
            for kwargs, tensors in self._adam_calls(members):
                compat.adam_step(*tensors, **{**kwargs, "lr": kwargs["lr"] * self.lr_factor})
        else:
            self._sgd(self.grad, active, everyone)

    def _adam_calls(self, members: tuple[int, ...]) -> list[tuple[dict, list]]:
        """The fused-kernel calls for this set of active members (built once per set): one per
        (lr, L2) group and slice — the decayed weights, the rest, or one slice without L2."""
        if members in self._calls:
            return self._calls[members]
        groups: dict[tuple[float, float], list[int]] = defaultdict(list)
        for k in members:
            groups[(self.lr[k], self.weight_decay[k])].append(k)
        p, g, m, v = self.flat, self.grad, self.state["m"], self.state["v"]
        width = p.shape[1]
        calls = []
        for (lr, wd), ks in groups.items():
            slices = (
                [(0, self.n_decay, wd), (self.n_decay, width, 0.0)] if wd else [(0, width, 0.0)]
            )
            for lo, hi, decay in slices:
                if hi <= lo:
                    continue
                tensors = [[t[k, lo:hi] for k in ks] for t in (p, g, m, v)]
                tensors.append([self.steps[k] for k in ks])
                kwargs = dict(
                    lr=lr,
                    beta1=self.betas[0],
                    beta2=self.betas[1],
                    weight_decay=decay,
                    eps=self.eps,
                )
                calls.append((kwargs, tensors))
        self._calls[members] = calls
        return calls

    def _sgd(self, g: torch.Tensor, active: torch.Tensor, everyone: bool) -> None:
        on = active.unsqueeze(1)
        if self._decay is not None:
            g = g + self._decay * self.flat
        if self.momentum:
            buf = self.state["buf"]
            first = torch.tensor([float(s) == 1 for s in self.steps], device=g.device)
            new = torch.where(first.unsqueeze(1), g, buf * self.momentum + g)
            buf.copy_(new if everyone else torch.where(on, new, buf))
            g = new
        update = (self._lr_t * self.lr_factor) * g
        if self.column_scale is not None:
            update = update * self.column_scale
        self.flat.sub_(update if everyone else torch.where(on, update, torch.zeros_like(update)))

    def state_dict(self) -> dict:
        return {"steps": torch.stack(self.steps), "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        for s, saved in zip(self.steps, state["steps"], strict=True):
            s.copy_(saved)
        for slot, value in state["state"].items():
            self.state[slot].copy_(value)
