"""Solo models after stacked training: one way to rebuild a member, one way to score it.

The engine trains members as one stack and hands back each member's restored state; studies
then score single models (test metrics, McNemar's per-image correctness, θ of an STN). Both
steps are written once here so that every study rebuilds and scores the same way: strict
state loading, eval mode, no gradients, fixed-size batches, results on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mnistlab.models.state import load_state_strict

Output = torch.Tensor | tuple[torch.Tensor, ...]


def solo(model: nn.Module, state: dict[str, torch.Tensor], what: str = "model") -> nn.Module:
    """``model`` (a fresh instance of the architecture) with ``state`` loaded strictly, in
    eval mode — a stack member, a checkpoint or a saved model as a single network."""
    load_state_strict(model, state, what)
    return model.eval()


@torch.inference_mode()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch: int = 4096,
    call: Callable[[torch.Tensor], Output] | None = None,
) -> Output:
    """``model`` (or ``call``, e.g. one of its methods) on ``prepare(part)`` for every batch of
    ``x``, in eval mode; the outputs concatenated on the CPU (each of them, for a tuple)."""
    model.eval()
    fn = call or model
    outs = [fn(prepare(part)) for part in x.split(batch)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[i].cpu() for o in outs]) for i in range(len(outs[0])))
    return torch.cat([o.cpu() for o in outs])
