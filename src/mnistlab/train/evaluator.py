"""The engine's evaluation: every evaluation set gathered once, and each epoch's eval-mode
loss and accuracy (overall and per kind) of every member, left on the device until the epoch's
one read (see :mod:`mnistlab.train.engine`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mnistlab.models.stack import Step
from mnistlab.train.members import Member, Pool, Prepare, gather
from mnistlab.train.trainer import Stack, pad

EVAL_ROWS = 8192  # rows per evaluation pass (shared sets: inputs; per-member sets: K × rows)


@dataclass
class EvalSet:
    """An evaluation set gathered once: ``[M, ...]`` shared by all members, or ``[K, M, ...]``
    one row of (padded) items per member with ``counts`` real items each."""

    x: torch.Tensor
    y: torch.Tensor
    kind: torch.Tensor | None
    counts: torch.Tensor | None

    @property
    def shared(self) -> bool:
        return self.counts is None


class Evaluator:
    """The evaluation sets of one stack, gathered once, and how they are scored each epoch."""

    def __init__(self, stack: Stack, pool: Pool, prepare: Prepare, evals: dict[str, EvalSet]):
        self.s, self.pool, self.prepare = stack, pool, prepare
        self.evals, self.eval_rows = evals, EVAL_ROWS
        # which members each set scores: None = all (per-member sets always score everyone)
        self.shared_sets = {name for name, ev in evals.items() if ev.shared}
        self.scored: dict[str, torch.Tensor | None] = {}
        for name, ev in evals.items():
            picks = [i for i, m in enumerate(stack.members) if m.shared is None or name in m.shared]
            everyone = not ev.shared or len(picks) == len(stack.members)
            self.scored[name] = (
                None if everyone else torch.tensor(picks, dtype=torch.long, device=stack.device)
            )

    @torch.no_grad()
    def evaluate(self) -> dict[str, torch.Tensor]:
        """Per evaluation set: [K, 3 + 2·kinds] on the device — summed loss, correct,
        correct per kind, item count, items per kind (zeros for members not scored on it)."""
        s = self.s
        k, nk = len(s), len(self.pool.kind_names)
        out = {}
        for name, ev in self.evals.items():
            sel = self.scored[name]
            p = s.tensors if sel is None else {n: t[sel] for n, t in s.tensors.items()}
            kk = k if sel is None else len(sel)
            if kk == 0:
                out[name] = torch.zeros(k, 3 + 2 * nk, device=s.device)
                continue
            total = ev.y.shape[-1]
            sums = torch.zeros(kk, 2 + nk, device=s.device)
            n_kind = torch.zeros(kk, nk, device=s.device)
            one_pass = ev.shared and hasattr(s.arch, "forward_shared")  # no K copies of inputs
            chunk = self.eval_rows if one_pass else max(64, self.eval_rows // kk)
            for lo in range(0, total, chunk):
                y = ev.y[..., lo : lo + chunk]
                if ev.shared:
                    logits = self._shared_logits(p, ev.x[lo : lo + chunk], kk)
                    y = y.expand(kk, -1)
                    w = torch.ones_like(y, dtype=torch.float)
                else:
                    logits = s.arch.forward(p, self.prepare(ev.x[:, lo : lo + chunk]), Step(False))
                    pos = torch.arange(lo, lo + y.shape[1], device=s.device)
                    w = (pos < ev.counts.unsqueeze(1)).float()
                ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
                hit = (logits.argmax(2) == y).float() * w
                sums[:, 0] += (ce.view_as(w) * w).sum(1)
                sums[:, 1] += hit.sum(1)
                if nk:
                    onehot = F.one_hot(ev.kind[..., lo : lo + chunk].expand(kk, -1), nk).float()
                    sums[:, 2:] += torch.einsum("km,kmc->kc", hit, onehot)
                    n_kind += torch.einsum("km,kmc->kc", w, onehot)
            size = torch.full((kk,), float(total), device=s.device)
            if not ev.shared:
                size = ev.counts.float()
            block = torch.cat([sums, size.unsqueeze(1), n_kind], 1)
            if sel is not None:
                block = torch.zeros(k, block.shape[1], device=s.device).index_copy(0, sel, block)
            out[name] = block
        return out

    def _shared_logits(self, p: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of ``k`` members (parameters ``p``) for one input batch shared by all."""
        arch = self.s.arch
        if hasattr(arch, "forward_shared"):
            return arch.forward_shared(p, self.prepare(x), Step(False))
        return arch.forward(p, self.prepare(x.unsqueeze(0).expand(k, *x.shape)), Step(False))


def eval_sets(
    members: list[Member], pool: Pool, shared: dict[str, torch.Tensor], device: torch.device
) -> dict[str, EvalSet]:
    """Every evaluation set, its items gathered from the pool once (not every epoch)."""

    def take(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
        return None if t is None else gather(t, idx)

    out = {}
    for name in members[0].evals:
        idx, counts = pad([m.evals[name].long() for m in members], device)
        count_t = torch.tensor(counts, device=device)
        out[name] = EvalSet(take(pool.x, idx), take(pool.y, idx), take(pool.kind, idx), count_t)
    for name, idx in shared.items():
        idx = idx.long().to(device)
        out[name] = EvalSet(take(pool.x, idx), take(pool.y, idx), take(pool.kind, idx), None)
    return out
