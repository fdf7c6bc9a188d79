"""Loading state dicts with one clear line on mismatch (used for checkpoints and weights)."""

from __future__ import annotations

import torch

from mnistlab.errors import MnistlabError


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load a state dict, turning key/shape mismatches into one clear line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(
                f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            )
        raise MnistlabError(f"{what} does not fit this architecture: {'; '.join(parts)}")
    model.load_state_dict(state)
