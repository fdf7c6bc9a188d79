"""The engine's moving parts: a stack's parameters, buffers, optimiser and per-member
generators (:class:`Stack`), and one call's epochs, steps, bookkeeping and checkpoint state
(:class:`Trainer`; see :mod:`mnistlab.train.engine`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from typing import Any

import torch
from torch.nn import functional as F

from mnistlab.models.stack import Noise, Step, member_state, stack_states
from mnistlab.progress import Task
from mnistlab.train.augment import augment_batch
from mnistlab.train.checkpoint import rng_states, set_rng_states
from mnistlab.train.members import Arch, Member, Pool, Prepare, Schedule, gather, identity
from mnistlab.train.optim import StackedOptimizer

FORMAT = 2  # bump when the checkpoint layout changes


def _derive(seed: int, stream: str) -> int:
    """An independent seed for one of a member's streams (batch order vs dropout)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _batch_group(stack: Stack) -> int:
    """G when the members come in runs of G with the same seed and training set (they then see
    the same batches) and the architecture can take one input per run; else 1."""
    if not getattr(stack.arch, "groupable", False) or stack.schedule.patience is not None:
        return 1  # (with early stopping, members of a run could stop apart)
    if any(stack.augments):
        return 1  # each member warps its own copy of the batch
    ms = stack.members
    for g in range(len(ms), 1, -1):
        if len(ms) % g:
            continue
        runs_ok = all(
            ms[i].seed == ms[i - i % g].seed and torch.equal(ms[i].train, ms[i - i % g].train)
            for i in range(len(ms))
        )
        if runs_ok:
            return g
    return 1


def numeric_path(arch: Arch) -> str:
    """The architecture's numeric path where it has more than one (the STN's conv-pool blocks:
    native or torch's layers), else ""."""
    path = getattr(arch, "numeric_path", None)
    return path() if path is not None else ""


def shape_of(arch: Arch, trainable: Collection[str]) -> str:
    """What of the architecture shapes training beside the members: the trainable tensors and
    their learning-rate scales (a checkpoint made with other scales is never resumed)."""
    names = sorted(trainable)
    scale = getattr(arch, "lr_scale", None)
    return repr(names if scale is None else [(n, float(scale(n))) for n in names])


def _column_scale(
    arch: Arch,
    names: list[str],
    sizes: list[int],
    device: torch.device,
    members: list[Member] | None = None,
) -> torch.Tensor | None:
    """``[P]`` (or, when members scale differently, ``[K, P]``) learning-rate multipliers laid
    out like ``Stack.flat``: the architecture's optional ``lr_scale(name)`` times each
    member's ``lr_scales``; None when every multiplier is 1."""
    arch_scale = getattr(arch, "lr_scale", None) or (lambda name: 1.0)

    def factor(name: str, m: Member | None) -> float:
        own = [f for prefix, f in (m.lr_scales if m else ()) if name.startswith(prefix)]
        return float(arch_scale(name)) * (own[0] if own else 1.0)

    rows = {tuple(factor(n, m) for n in names) for m in (members or [None])}
    if rows == {tuple(1.0 for _ in names)}:
        return None
    per = [[factor(n, m) for n in names] for m in (members or [None])]
    out = torch.stack(
        [torch.cat([torch.full((s,), f) for f, s in zip(row, sizes, strict=True)]) for row in per]
    )
    return (out[0] if len(rows) == 1 else out).to(device)


def pad(rows: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Index lists of different lengths → ``[K, max]`` (padded with 0) and the lengths."""
    counts = [len(r) for r in rows]
    out = torch.zeros(len(rows), max(counts), dtype=torch.long)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out.to(device), counts


class Stack:
    """The stacked parameters, buffers and optimiser of K members (see the module doc).

    Trainable tensors are views into one ``[K, P]`` buffer (``flat``), each a leaf of its own
    for autograd; the optimiser updates the buffer in one piece.
    """

    def __init__(
        self,
        arch: Arch,
        members: list[Member],
        schedule: Schedule,
        trainable: Collection[str],
        device: torch.device,
    ):
        self.arch, self.members, self.schedule, self.device = arch, members, schedule, device
        stacked = stack_states([m.state for m in members])
        k = len(members)
        names = [n for n in stacked if n in trainable]
        names.sort(key=lambda n: not arch.decays(n))  # L2-decayed tensors first (stable)
        sizes = [stacked[n][0].numel() for n in names]
        self.flat = torch.empty(k, sum(sizes), device=device)
        self.params: dict[str, torch.Tensor] = {}
        start = n_decay = 0
        for n, size in zip(names, sizes, strict=True):
            view = self.flat[:, start : start + size]
            view.copy_(stacked[n].reshape(k, size))
            self.params[n] = view.view(k, *stacked[n].shape[1:]).requires_grad_()
            start += size
            n_decay = start if arch.decays(n) else n_decay
        self.fixed = {n: t.to(device) for n, t in stacked.items() if n not in trainable}
        self.tensors = {**self.params, **self.fixed}
        self.optimizer = StackedOptimizer(
            self.flat,
            kind=schedule.optimizer,
            lr=[m.lr for m in members],
            weight_decay=[m.weight_decay for m in members],
            n_decay=n_decay,
            momentum=schedule.momentum,
            column_scale=_column_scale(arch, names, sizes, device, members),
        )
        self.order_gens = [torch.Generator().manual_seed(_derive(m.seed, "order")) for m in members]
        self.noise_gens = [
            torch.Generator(device=device).manual_seed(_derive(m.seed, "noise")) for m in members
        ]
        self.augment_gens = [
            torch.Generator(device=device).manual_seed(_derive(m.seed, "augment")) for m in members
        ]
        self.augments = [m.augment if m.augments else None for m in members]

    def __len__(self) -> int:
        return len(self.members)

    def state(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k`` now, as a solo state dict."""
        return member_state(self.tensors, k)

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        return self.arch.forward(self.tensors, x, step)

    def write_grad(self, grads) -> None:
        """Lay per-parameter gradients out like ``flat``, into the optimiser's buffer."""
        torch.cat([g.reshape(len(self), -1) for g in grads], 1, out=self.optimizer.grad)


class Trainer:
    """One call of :func:`train_stack` (kept as an object so each phase is a short method)."""

    def __init__(self, stack: Stack, pool: Pool, prepare: Prepare, evaluator: Any):
        """``evaluator``: the stack's :class:`~mnistlab.train.evaluator.Evaluator`."""
        self.s, self.pool, self.prepare = stack, pool, prepare
        dev = stack.device
        self.train_idx, self.counts = pad([m.train.long() for m in stack.members], dev)
        self.counts_t = torch.tensor(self.counts, device=dev)
        self.evaluator = evaluator
        k = len(stack)
        self.alive = [True] * k
        self.history: list[dict[str, Any]] = []
        self.best_value = [-math.inf if stack.schedule.maximize else math.inf] * k
        self.best_epoch = [0] * k
        self.epochs_run = [0] * k
        self.best = (
            {n: t.detach().clone() for n, t in stack.tensors.items()}
            if stack.schedule.restore_best
            else None
        )
        self.seconds = 0.0
        self.stopped = False
        self.group = _batch_group(stack)

    # ------------------------------------------------------------------------ one epoch
    def epoch(self, task: Task) -> torch.Tensor:
        """Train every live member for one epoch; return [K, 2] (summed loss, correct)."""
        s, bs, g = self.s, self.s.schedule.batch_size, self.group
        order = torch.zeros_like(self.train_idx)
        for i in range(0, len(s), g):  # one order per run of G members (they would draw the same)
            if self.alive[i]:
                perm = torch.randperm(self.counts[i], generator=s.order_gens[i]).to(s.device)
                order[i, : self.counts[i]] = self.train_idx[i, perm]
        live = [c if a else 0 for c, a in zip(self.counts, self.alive, strict=True)]
        live_t = self.counts_t * torch.tensor(self.alive, device=s.device)
        totals = torch.zeros(len(s), 2, device=s.device)
        default = getattr(s.arch, "dropout", 0.0)
        rates = [default if m.dropout is None else m.dropout for m in s.members]
        leaders = order[::g]
        # Gather a block of steps at once (about 16M elements): each step's batch is then a
        # view, not a small gather of its own.
        per_step = leaders.shape[0] * bs * max(1, self.pool.x[0].numel())
        block = bs * max(1, (1 << 24) // per_step)
        for lo in range(0, max(live), bs):
            if lo % block == 0:
                xs = gather(self.pool.x, leaders[:, lo : lo + block])
                ys = gather(self.pool.y, leaders[:, lo : lo + block])
            rows = [max(0, min(bs, n - lo)) for n in live]
            at, b = lo % block, max(rows)
            n_t = (live_t - lo).clamp(0, bs)
            totals += self._step(xs[:, at : at + b], ys[:, at : at + b], rows, n_t, rates)
            task.advance(1)
        return totals

    def _step(
        self, raw: torch.Tensor, y: torch.Tensor, rows: list[int], n_t: torch.Tensor, rates
    ) -> torch.Tensor:
        """One optimiser step of every member with rows left; returns [K, 2] (loss, correct)."""
        s, dev, g = self.s, self.s.device, self.group
        k, b = len(s), max(rows)
        drops = any(r > 0 for r in rates)
        if any(s.augments):
            raw = augment_batch(raw, s.augments, s.augment_gens, rows)
        x = self._prepare(raw, rows)
        if g > 1:
            y = y.repeat_interleave(g, 0)
        w = None if min(rows) == b else (torch.arange(b, device=dev) < n_t.unsqueeze(1)).float()
        active = n_t > 0
        noise = Noise(s.noise_gens, rows, b, rates, dev) if drops else None
        step = Step(True, noise, w, active, g)
        if hasattr(s.arch, "loss_and_grads") and not drops:  # closed-form gradients
            ones = w if w is not None else torch.ones(k, b, device=dev)
            per_row = ones / n_t.clamp_min(1).unsqueeze(1)
            ce, logits, grads = s.arch.loss_and_grads(s.tensors, x, y, per_row, step)
            if w is not None:
                ce = ce * w
            s.write_grad([grads[n] for n in s.params])
        else:
            logits = s.forward(x, step)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            ce = ce.view(k, b) if w is None else ce.view(k, b) * w
            loss = (ce.sum(1) / n_t.clamp_min(1)).sum()
            s.write_grad(torch.autograd.grad(loss, list(s.params.values())))
        s.optimizer.step(active, tuple(i for i, n in enumerate(rows) if n > 0))
        hit = (logits.detach().argmax(2) == y).float()
        if w is not None:
            hit = hit * w
        return torch.stack([ce.detach().sum(1), hit.sum(1)], 1)

    def _prepare(self, raw: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Model inputs of a step; a costly ``prepare`` (a frozen trunk) runs only for the
        members with rows in it — those that stopped early or finished their epoch sit out."""
        if self.prepare is identity or min(rows) > 0:
            return self.prepare(raw)
        live = torch.tensor([i for i, n in enumerate(rows) if n > 0], device=raw.device)
        part = self.prepare(raw.index_select(0, live))
        return part.new_zeros((len(rows), *part.shape[1:])).index_copy_(0, live, part)

    # ------------------------------------------------------------------------ bookkeeping
    def record(self, epoch: int, totals: torch.Tensor, evals: dict, seconds: float) -> None:
        """One sync per epoch: metrics to the host, history rows, early stopping."""
        s, sch = self.s, self.s.schedule
        names = list(evals)
        flat = torch.cat([totals.flatten(), *(evals[n].flatten() for n in names)]).tolist()
        k, nk = len(s), len(self.pool.kind_names)
        tr, pos = flat[: 2 * k], 2 * k
        per_set = {}
        for n in names:
            width = 3 + 2 * nk
            per_set[n] = [flat[pos + i * width : pos + (i + 1) * width] for i in range(k)]
            pos += width * k
        improved = [False] * k
        self.improved = improved
        for i, m in enumerate(s.members):
            if not self.alive[i]:
                continue
            row: dict[str, Any] = {"member": i, **m.meta, "epoch": epoch}
            row["train_loss"] = tr[2 * i] / self.counts[i]
            row["train_acc"] = tr[2 * i + 1] / self.counts[i]
            for n in names:
                if m.shared is not None and n in self.evaluator.shared_sets and n not in m.shared:
                    continue  # this member is not scored on that shared set
                v = per_set[n][i]
                size = max(v[2 + nk], 1.0)
                row[f"{n}_loss"], row[f"{n}_acc"] = v[0] / size, v[1] / size
                for j, kind in enumerate(self.pool.kind_names):
                    row[f"{n}_acc_{kind}"] = v[2 + j] / max(v[3 + nk + j], 1.0)
            row["seconds"] = seconds
            self.history.append(row)
            self.epochs_run[i] = epoch
            watched = row.get(sch.monitor)
            if watched is not None and self._better(watched, self.best_value[i]):
                self.best_value[i], self.best_epoch[i], improved[i] = watched, epoch, True
            if sch.patience is not None and epoch - self.best_epoch[i] >= sch.patience:
                self.alive[i] = False
        if self.best is not None and any(improved):
            mask = torch.tensor(improved, device=s.device)
            with torch.no_grad():
                for n, t in s.tensors.items():
                    keep = mask.view(-1, *([1] * (t.dim() - 1)))
                    self.best[n].copy_(torch.where(keep, t, self.best[n]))

    def _better(self, value: float, best: float) -> bool:
        sch = self.s.schedule
        return value > best + sch.min_delta if sch.maximize else value < best - sch.min_delta

    # ------------------------------------------------------------------------ checkpoints
    def snapshot(self, epoch: int, fingerprint: str) -> dict[str, Any]:
        s = self.s
        return {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "numeric_path": numeric_path(s.arch),
            "epoch": epoch,
            "tensors": {n: t.detach().cpu() for n, t in s.tensors.items()},
            "optimizer": s.optimizer.state_dict(),
            "order_gens": [g.get_state() for g in s.order_gens],
            "noise_gens": [g.get_state() for g in s.noise_gens],
            "augment_gens": [g.get_state() for g in s.augment_gens],
            "rng": rng_states(),
            "alive": self.alive,
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "best": None if self.best is None else {n: t.cpu() for n, t in self.best.items()},
            "seconds": self.seconds,
            "stopped": self.stopped,
        }

    def restore(self, ck: dict[str, Any]) -> int:
        s = self.s
        with torch.no_grad():
            for n, t in s.tensors.items():
                t.copy_(ck["tensors"][n])
        s.optimizer.load_state_dict(ck["optimizer"])
        for g, st in zip(s.order_gens, ck["order_gens"], strict=True):
            g.set_state(st)
        for g, st in zip(s.noise_gens, ck["noise_gens"], strict=True):
            g.set_state(st)
        for g, st in zip(s.augment_gens, ck["augment_gens"], strict=True):
            g.set_state(st)
        set_rng_states(ck["rng"])
        self.alive, self.history = list(ck["alive"]), list(ck["history"])
        self.best_value, self.best_epoch = list(ck["best_value"]), list(ck["best_epoch"])
        self.epochs_run, self.seconds = list(ck["epochs_run"]), ck["seconds"]
        self.stopped = bool(ck["stopped"])
        if self.best is not None and ck["best"] is not None:
            for n, t in self.best.items():
                t.copy_(ck["best"][n])
        return int(ck["epoch"])
