"""The one training engine: K same-shaped members trained together as one stack.

Every study trains models of one shape many times over — seeds, learning-rate grids, folds,
transfer variants — and every such model is small enough that a step costs overhead rather than
arithmetic. The engine trains a *group* of them as one stacked network (``models/stack.py``)
while each member keeps what makes it itself: its own initial weights, training indices, batch
order (its own generator), dropout stream (its own generator), learning rate, L2 weight,
dropout rate, early stopping and best weights. Members may have training sets of different
sizes: a member whose epoch has ended sits the remaining steps out, untouched. Members with no
randomness inside therefore train exactly as they would alone, up to the floating-point order
of a batched matmul (``tests/test_engine.py`` states the tolerance); dropout masks and
augmentations come from per-member generators, so a member's results never depend on which
other members share its stack.

One history layout: one row per (member, epoch) with the member's ``meta`` fields, the running
``train_loss``/``train_acc`` and ``<set>_loss``/``<set>_acc`` (and ``<set>_acc_<kind>``) for
every evaluation set, measured in evaluation mode after the epoch. One checkpoint holds all
that is needed to resume bit-identically: parameters and buffers, optimiser moments, every
member's generators, the global CPU and CUDA generators, early-stopping state and history.
No value leaves the device inside the step loop; metrics are read once per epoch.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn import functional as F

from mnistlab.errors import CorruptFileError
from mnistlab.models.stack import Noise, Step, member_state, stack_states
from mnistlab.progress import Progress, Task
from mnistlab.progress import default as default_progress
from mnistlab.train.allocator import keep_freed_memory
from mnistlab.train.augment import Augment, augment_batch
from mnistlab.train.checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from mnistlab.train.optim import StackedOptimizer

FORMAT = 2  # bump when the checkpoint layout changes


class Arch(Protocol):
    """What the engine needs of an architecture (see ``models/stack.py``)."""

    def forward(self, p: dict[str, torch.Tensor], x: torch.Tensor, step: Step) -> torch.Tensor: ...

    def decays(self, name: str) -> bool: ...


@dataclass(frozen=True)
class Schedule:
    """How a stack trains; the same for every member (what differs lives in :class:`Member`)."""

    epochs: int
    batch_size: int
    optimizer: str = "adam"
    momentum: float = 0.0
    monitor: str = "val_loss"  # the history column early stopping and "best" refer to
    maximize: bool = False  # True for an accuracy, False for a loss
    patience: int | None = None  # stop a member this many epochs after its best; None: never
    min_delta: float = 0.0  # smallest change of ``monitor`` that counts as an improvement
    restore_best: bool = False  # end with each member's best-``monitor`` weights (ties: earliest)
    checkpoint_every: int = 1
    lr_schedule: str = "constant"  # "cosine": annealed from lr towards 0; "steps": ÷10 drops
    horizon: int | None = None  # epochs the cosine spans (default: ``epochs``)
    lr_drops: tuple[int, ...] = ()  # "steps": the lr is divided by 10 after each of these epochs

    def lr_factor(self, epoch: int) -> float:
        """The learning-rate multiplier of ``epoch`` (1-based)."""
        if self.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / (self.horizon or self.epochs)))
        if self.lr_schedule == "steps":
            return 0.1 ** sum(epoch > d for d in self.lr_drops)
        return 1.0


@dataclass
class Member:
    """One model of the stack."""

    seed: int  # batch order and dropout stream
    state: dict[str, torch.Tensor]  # initial weights: the solo module's state dict
    train: torch.Tensor  # indices into the pool
    lr: float
    weight_decay: float = 0.0
    dropout: float | None = None  # None: the architecture's own rate (0 if it has none)
    evals: dict[str, torch.Tensor] = field(default_factory=dict)  # own evaluation sets
    meta: dict[str, Any] = field(default_factory=dict)  # copied into every history row
    shared: frozenset[str] | None = None  # shared sets scored every epoch (None: all)
    augment: Augment | None = None  # random affine warps of its training images

    @property
    def augments(self) -> bool:
        """Whether it draws warps (its inputs then differ every batch: no cached trunk)."""
        return self.augment is not None and self.augment.active


@dataclass
class Pool:
    """The data every member draws from, by index (kept on the device)."""

    x: torch.Tensor
    y: torch.Tensor
    kind: torch.Tensor | None = None  # a group id per item: accuracy is also given per group
    kind_names: tuple[str, ...] = ()

    def to(self, device: torch.device) -> Pool:
        kind = None if self.kind is None else self.kind.to(device)
        return Pool(self.x.to(device), self.y.to(device), kind, self.kind_names)


@dataclass
class StackResult:
    history: list[dict[str, Any]]  # one row per member and epoch
    states: list[dict[str, torch.Tensor]]  # final (or best, with restore_best) solo states
    best_epoch: list[int]
    epochs_run: list[int]
    seconds: float  # wall time of the whole stack (training and per-epoch evaluation)
    stopped: bool = False  # ``on_epoch`` asked to stop (e.g. a pruned trial)

    def rows(self, k: int) -> list[dict[str, Any]]:
        return [r for r in self.history if r["member"] == k]

    @staticmethod
    def merge(parts: list[tuple[list[int], StackResult]]) -> StackResult:
        """Stacks trained apart as one result: ``(where, result)`` puts member ``k`` of
        ``result`` at position ``where[k]``; seconds add up (the stacks ran one after another)."""
        n = sum(len(where) for where, _ in parts)
        states: list[Any] = [None] * n
        best, run = [0] * n, [0] * n
        history = []
        for where, res in parts:
            for k, at in enumerate(where):
                states[at], best[at], run[at] = res.states[k], res.best_epoch[k], res.epochs_run[k]
            history += [{**r, "member": where[r["member"]]} for r in res.history]
        history.sort(key=lambda r: (r["epoch"], r["member"]))
        seconds = sum(res.seconds for _, res in parts)
        return StackResult(history, states, best, run, seconds, any(r.stopped for _, r in parts))


@dataclass
class _EvalSet:
    """An evaluation set gathered once: ``[M, ...]`` shared by all members, or ``[K, M, ...]``
    one row of (padded) items per member with ``counts`` real items each."""

    x: torch.Tensor
    y: torch.Tensor
    kind: torch.Tensor | None
    counts: torch.Tensor | None

    @property
    def shared(self) -> bool:
        return self.counts is None


@dataclass
class EpochInfo:
    """What an ``on_epoch`` callback sees after each epoch."""

    epoch: int
    rows: list[dict[str, Any]]  # this epoch's history rows (members still training)
    best_epoch: list[int]  # per member, by ``Schedule.monitor``
    improved: list[bool]  # per member: this epoch is its new best
    stack: Stack
    last: bool  # no further epoch will run


Prepare = Callable[[torch.Tensor], torch.Tensor]
EVAL_ROWS = 8192  # rows per evaluation pass (shared sets: inputs; per-member sets: K × rows)
OnEpoch = Callable[[EpochInfo], bool | None]
# After each epoch's evaluation: extra columns of every member's history row (e.g. statistics
# of the STN's θ on fixed images), so they are checkpointed and resumed with the history.
Measure = Callable[["Stack"], list[dict[str, float]]]


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _derive(seed: int, stream: str) -> int:
    """An independent seed for one of a member's streams (batch order vs dropout)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for an index tensor of any shape (``index_select`` is ~4× faster on the CPU
    than advanced indexing with a 2-D index)."""
    return x.index_select(0, idx.flatten()).view(*idx.shape, *x.shape[1:])


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


def _shape_of(arch: Arch, trainable: Collection[str]) -> str:
    """What of the architecture shapes training beside the members: the trainable tensors and
    their learning-rate scales (a checkpoint made with other scales is never resumed)."""
    names = sorted(trainable)
    scale = getattr(arch, "lr_scale", None)
    return repr(names if scale is None else [(n, float(scale(n))) for n in names])


def _column_scale(
    arch: Arch, names: list[str], sizes: list[int], device: torch.device
) -> torch.Tensor | None:
    """``[P]`` learning-rate multipliers laid out like ``Stack.flat`` from the architecture's
    optional ``lr_scale(name)``; None when it has none or every multiplier is 1."""
    scale = getattr(arch, "lr_scale", None)
    if scale is None or all(scale(n) == 1.0 for n in names):
        return None
    return torch.cat(
        [torch.full((size,), float(scale(n))) for n, size in zip(names, sizes, strict=True)]
    ).to(device)


def _pad(rows: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, list[int]]:
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
            column_scale=_column_scale(arch, names, sizes, device),
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


class _Evaluator:
    """The evaluation sets of one stack, gathered once, and how they are scored each epoch."""

    def __init__(self, stack: Stack, pool: Pool, prepare: Prepare, evals: dict[str, _EvalSet]):
        self.s, self.pool, self.prepare = stack, pool, prepare
        self.evals, self.eval_rows = evals, EVAL_ROWS
        # which members each set scores: None = all (per-member sets always score everyone)
        self.shared_sets = {name for name, ev in evals.items() if ev.shared}
        self.scored: dict[str, torch.Tensor | None] = {}
        for name, ev in evals.items():
            picks = [i for i, m in enumerate(stack.members) if m.shared is None or name in m.shared]
            everyone = not ev.shared or len(picks) == len(stack.members)
            self.scored[name] = None if everyone else torch.tensor(picks, device=stack.device)

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


class _Trainer:
    """One call of :func:`train_stack` (kept as an object so each phase is a short method)."""

    def __init__(self, stack: Stack, pool: Pool, prepare: Prepare, evaluator: _Evaluator):
        self.s, self.pool, self.prepare = stack, pool, prepare
        dev = stack.device
        self.train_idx, self.counts = _pad([m.train.long() for m in stack.members], dev)
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


def _sources(
    pool: Pool, prepare: Prepare, members: list[Member], cache: bool
) -> tuple[Pool, Prepare, Pool, Prepare]:
    """(pool, prepare) for training and for evaluation: the frozen trunk's output once per
    image where ``cache`` allows it (evaluation always; training unless a member augments)."""
    if not cache:
        return pool, prepare, pool, prepare
    cached = prepared_pool(pool, prepare)
    if any(m.augments for m in members):
        return pool, prepare, cached, identity
    return cached, identity, cached, identity


def prepared_pool(pool: Pool, prepare: Prepare, rows: int = EVAL_ROWS) -> Pool:
    """``pool`` with ``prepare`` applied to every item once (in chunks of ``rows``)."""
    if prepare is identity:
        return pool
    with torch.no_grad():
        x = torch.cat(
            [prepare(pool.x[lo : lo + rows].unsqueeze(0))[0] for lo in range(0, len(pool.x), rows)]
        )
    return Pool(x, pool.y, pool.kind, pool.kind_names)


def _eval_sets(
    members: list[Member], pool: Pool, shared: dict[str, torch.Tensor], device: torch.device
) -> dict[str, _EvalSet]:
    """Every evaluation set, its items gathered from the pool once (not every epoch)."""

    def take(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
        return None if t is None else gather(t, idx)

    out = {}
    for name in members[0].evals:
        idx, counts = _pad([m.evals[name].long() for m in members], device)
        count_t = torch.tensor(counts, device=device)
        out[name] = _EvalSet(take(pool.x, idx), take(pool.y, idx), take(pool.kind, idx), count_t)
    for name, idx in shared.items():
        idx = idx.long().to(device)
        out[name] = _EvalSet(take(pool.x, idx), take(pool.y, idx), take(pool.kind, idx), None)
    return out


def fingerprint(members: list[Member], schedule: Schedule, extra: str = "") -> str:
    """A digest of everything that shapes a stack's training: a checkpoint made for another
    stack is never resumed from."""
    h = hashlib.sha256(repr((FORMAT, schedule, extra)).encode())
    for m in members:
        h.update(
            repr(
                (m.seed, m.lr, m.weight_decay, m.dropout, m.augment, sorted(m.meta.items()))
            ).encode()
        )
        for t in (m.train, *(m.evals[n] for n in sorted(m.evals))):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for n in sorted(m.state):
            h.update(n.encode())
            h.update(m.state[n].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_stack(
    arch: Arch,
    members: list[Member],
    pool: Pool,
    schedule: Schedule,
    *,
    trainable: Collection[str],
    device: torch.device,
    prepare: Prepare = identity,
    shared_evals: dict[str, torch.Tensor] | None = None,
    checkpoint: Path | None = None,
    progress: Progress | None = None,
    description: str = "train",
    on_epoch: OnEpoch | None = None,
    cache_prepared: bool = False,
    measure: Measure | None = None,
) -> StackResult:
    """Train ``members`` together; resume from ``checkpoint`` when it holds this stack.

    Args:
        arch: the stacked architecture (forward + which tensors take L2).
        members: the models; every ``Member.evals`` must name the same sets.
        pool: inputs and labels the members index into (moved to ``device``).
        trainable: names (solo state-dict keys) that train; the rest stay fixed.
        prepare: gathered pool inputs ``[K, B, ...]`` → model inputs (type conversion, or a
            frozen trunk shared by all members).
        shared_evals: evaluation sets common to all members (indices into the pool).
        cache_prepared: ``prepare`` is a fixed function of each image (a frozen trunk), so it
            runs once per pool image instead of once per batch and epoch: for the evaluation
            sets always (they are never augmented), for training when no member augments.
        on_epoch: called after each recorded epoch; returning True stops the stack.
        measure: per-member extra history columns, computed after each epoch's evaluation.
    """
    progress = progress or default_progress()
    keep_freed_memory()  # also in a Ray worker or a notebook, where no study opened a run
    pool, prepare, eval_pool, eval_prepare = _sources(
        pool.to(device), prepare, members, cache_prepared
    )
    evals = _eval_sets(members, eval_pool, shared_evals or {}, device)

    def fresh() -> _Trainer:
        stack = Stack(arch, members, schedule, trainable, device)
        return _Trainer(stack, pool, prepare, _Evaluator(stack, eval_pool, eval_prepare, evals))

    print_ = fingerprint(members, schedule, _shape_of(arch, trainable))
    t, start = _resume(fresh, checkpoint, print_, progress, description)
    steps = math.ceil(max(t.counts) / schedule.batch_size)  # batches per epoch
    task = progress.task(f"{description} ({schedule.epochs} epochs)", schedule.epochs * steps)
    task.advance((start - 1) * steps)
    for epoch in range(start, schedule.epochs + 1):
        if t.stopped or not any(t.alive):
            break
        last = _epoch(t, epoch, task, on_epoch, measure)
        if checkpoint is not None and (last or epoch % schedule.checkpoint_every == 0):
            save_checkpoint(checkpoint, t.snapshot(epoch, print_))
        task.advance(0, epoch=epoch, **_progress_fields(t.history, epoch))
    task.done()
    final = t.best if t.best is not None else t.s.tensors
    states = [member_state(final, k) for k in range(len(t.s))]
    return StackResult(t.history, states, t.best_epoch, t.epochs_run, t.seconds, t.stopped)


def _epoch(
    t: _Trainer, epoch: int, task: Task, on_epoch: OnEpoch | None, measure: Measure | None
) -> bool:
    """Train, score and record one epoch; True when it is the stack's last."""
    schedule = t.s.schedule
    t0 = time.perf_counter()
    t.s.optimizer.lr_factor = schedule.lr_factor(epoch)
    totals = t.epoch(task)
    ev = t.evaluator.evaluate()
    t.seconds += time.perf_counter() - t0
    t.record(epoch, totals, ev, t.seconds)
    rows = [r for r in t.history if r["epoch"] == epoch]
    if measure is not None:
        with torch.no_grad():
            extra = measure(t.s)
        for r in rows:
            r.update(extra[r["member"]])
    last = epoch == schedule.epochs or not any(t.alive)
    if on_epoch is not None:
        info = EpochInfo(epoch, rows, list(t.best_epoch), list(t.improved), t.s, last)
        if on_epoch(info):
            t.stopped = last = True
    return last


def _resume(
    fresh: Callable[[], _Trainer],
    checkpoint: Path | None,
    print_: str,
    progress: Progress,
    description: str,
) -> tuple[_Trainer, int]:
    """A trainer and the first epoch to run: from ``checkpoint`` when it verifies and was made
    for this very stack, from scratch otherwise (a damaged checkpoint is reported, deleted)."""
    t = fresh()
    if checkpoint is None or not checkpoint.is_file():
        return t, 1
    try:
        ck = load_checkpoint(checkpoint)
    except CorruptFileError as exc:
        reason = str(exc)
    else:
        if ck.get("format") == FORMAT and ck.get("fingerprint") == print_:
            start = t.restore(ck) + 1
            progress.message(f"{description}: resumed after epoch {start - 1}")
            return t, start
        # intact, but written by another stack (other members or an older format)
        reason = f"{checkpoint} was written for another stack or format"
    progress.message(f"{reason}; training this stack from the start")
    checkpoint.unlink(missing_ok=True)
    return fresh(), 1


def _progress_fields(history: list[dict[str, Any]], epoch: int) -> dict[str, float]:
    rows = [r for r in history if r["epoch"] == epoch]
    keys = [k for k in ("val_acc", "test_acc", "train_acc") if rows and k in rows[0]]
    return {keys[0]: sum(r[keys[0]] for r in rows) / len(rows)} if keys else {}
