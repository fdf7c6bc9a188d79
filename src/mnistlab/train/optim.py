"""SGD and Adam for a stack: one learning rate and one L2 weight per member.

``torch.optim`` keeps one learning rate per parameter *tensor*; a stack holds K members in one
tensor, so a grid of learning rates needs the update written out. The arithmetic is
``torch.optim.SGD`` / ``torch.optim.Adam`` (single-tensor path) member by member, including
Adam's *coupled* weight decay (λ·w added to the gradient, the gradient of λ/2·‖w‖²) applied to
the tensors the architecture names (weight matrices).

All of a stack's trainable parameters live in one ``[K, P]`` buffer (the named parameters are
views into it), so a step is a handful of whole-buffer operations whether the model has 2
parameter tensors or 16 — the per-tensor loop cost 1.4 ms a step for two tensors on the CPU.

A member outside ``active`` sits the step out entirely — parameters, moments and Adam's step
count unchanged — so a member whose epoch ended early, or that stopped early, evolves exactly
as it would alone.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "adam")


class StackedOptimizer:
    def __init__(
        self,
        flat: torch.Tensor,
        *,
        kind: str,
        lr: torch.Tensor,
        weight_decay: torch.Tensor,
        decay_mask: torch.Tensor,
        momentum: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        """``flat`` [K, P] parameters; ``lr``/``weight_decay`` [K]; ``decay_mask`` [P] (1 where
        L2 applies)."""
        if kind not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {kind!r}")
        self.flat, self.kind = flat, kind
        self.lr, self.momentum, self.betas, self.eps = lr.unsqueeze(1), momentum, betas, eps
        # λ_k · mask_p, or None when no member decays anything
        decay = weight_decay.unsqueeze(1) * decay_mask.unsqueeze(0)
        self.decay = decay if bool((decay != 0).any()) else None
        self.steps = torch.zeros(flat.shape[0], 1, dtype=torch.float64, device=flat.device)
        self.state: dict[str, torch.Tensor] = {}
        if kind == "adam":
            self.state = {"m": torch.zeros_like(flat), "v": torch.zeros_like(flat)}
        elif momentum:
            self.state = {"buf": torch.zeros_like(flat)}

    @torch.no_grad()
    def step(self, g: torch.Tensor, active: torch.Tensor, everyone: bool = False) -> None:
        """One update of every member in ``active`` (bool ``[K]``, on the device) from the
        gradient ``g`` [K, P]. ``everyone`` (known on the host) says all are active: the
        update then runs in place, without the masking passes."""
        on = active.unsqueeze(1)
        self.steps += on.double()
        p = self.flat
        if self.decay is not None:
            g = g + self.decay * p
        if self.kind == "sgd":
            if self.momentum:
                buf = self.state["buf"]
                new = torch.where(self.steps == 1, g, buf * self.momentum + g)
                buf.copy_(new if everyone else torch.where(on, new, buf))
                g = new
            update = self.lr * g
        else:
            b1, b2 = self.betas
            bc1 = (1 - b1 ** self.steps.clamp_min(1)).float()
            bc2_sqrt = (1 - b2 ** self.steps.clamp_min(1)).sqrt().float()
            m, v = self.state["m"], self.state["v"]
            if everyone:
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
            else:
                m.copy_(torch.where(on, m.lerp(g, 1 - b1), m))
                v.copy_(torch.where(on, v * b2 + (1 - b2) * g * g, v))
            denom = v.sqrt().div_(bc2_sqrt).add_(self.eps)
            update = m / denom * (self.lr / bc1)
        p.sub_(update if everyone else torch.where(on, update, torch.zeros_like(update)))

    def state_dict(self) -> dict:
        return {"steps": self.steps, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.steps.copy_(state["steps"])
        for slot, value in state["state"].items():
            self.state[slot].copy_(value)
