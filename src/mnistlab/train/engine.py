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
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import CorruptFileError
from mnistlab.models.stack import member_state
from mnistlab.progress import Progress, Task
from mnistlab.progress import default as default_progress
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.evaluator import EVAL_ROWS, Evaluator, eval_sets
from mnistlab.train.members import (
    Arch,
    EpochInfo,
    Measure,
    Member,
    OnEpoch,
    Pool,
    Prepare,
    Schedule,
    StackResult,
    gather,
    identity,
)
from mnistlab.train.trainer import FORMAT, Stack, Trainer, numeric_path, shape_of

__all__ = [
    "EVAL_ROWS",
    "FORMAT",
    "Arch",
    "EpochInfo",
    "Measure",
    "Member",
    "OnEpoch",
    "Pool",
    "Prepare",
    "Schedule",
    "Stack",
    "StackResult",
    "fingerprint",
    "gather",
    "identity",
    "prepared_pool",
    "train_stack",
]


def prepared_pool(pool: Pool, prepare: Prepare, rows: int = EVAL_ROWS) -> Pool:
    """``pool`` with ``prepare`` applied to every item once (in chunks of ``rows``)."""
    if prepare is identity:
        return pool
    with torch.no_grad():
        x = torch.cat(
            [prepare(pool.x[lo : lo + rows].unsqueeze(0))[0] for lo in range(0, len(pool.x), rows)]
        )
    return Pool(x, pool.y, pool.kind, pool.kind_names)


def fingerprint(members: list[Member], schedule: Schedule, extra: str = "") -> str:
    """A digest of everything that shapes a stack's training: a checkpoint made for another
    stack is never resumed from."""
    h = hashlib.sha256(repr((FORMAT, schedule, extra)).encode())
    for m in members:
        fields = (m.seed, m.lr, m.weight_decay, m.dropout, m.augment, sorted(m.meta.items()))
        h.update(repr(fields + ((m.lr_scales,) if m.lr_scales else ())).encode())
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
        on_epoch: called after each recorded epoch; returning True stops the stack.
        measure: per-member extra history columns, computed after each epoch's evaluation.
    """
    progress = progress or default_progress()
    pool = pool.to(device)
    evals = eval_sets(members, pool, shared_evals or {}, device)

    def fresh() -> Trainer:
        stack = Stack(arch, members, schedule, trainable, device)
        return Trainer(stack, pool, prepare, Evaluator(stack, pool, prepare, evals))

    print_ = fingerprint(members, schedule, shape_of(arch, trainable))
    t, start = _resume(fresh, checkpoint, (print_, numeric_path(arch)), progress, description)
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
    t: Trainer, epoch: int, task: Task, on_epoch: OnEpoch | None, measure: Measure | None
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
    fresh: Callable[[], Trainer],
    checkpoint: Path | None,
    made_for: tuple[str, str],
    progress: Progress,
    description: str,
) -> tuple[Trainer, int]:
    """A trainer and the first epoch to run: from ``checkpoint`` when it verifies and was made
    for this very stack (``made_for``: its fingerprint and numeric path), from scratch
    otherwise (a damaged checkpoint is reported, deleted)."""
    t = fresh()
    if checkpoint is None or not checkpoint.is_file():
        return t, 1
    try:
        ck = load_checkpoint(checkpoint)
    except CorruptFileError as exc:
        reason = str(exc)
    else:
        reason = _mismatch(ck, checkpoint, *made_for)
        if reason is None:
            start = t.restore(ck) + 1
            progress.message(f"{description}: resumed after epoch {start - 1}")
            return t, start
    progress.message(f"{reason}; training this stack from the start")
    checkpoint.unlink(missing_ok=True)
    return fresh(), 1


def _mismatch(ck: dict[str, Any], where: Path, print_: str, path: str) -> str | None:
    """Why an intact checkpoint cannot be resumed here (None: it can)."""
    if ck.get("format") != FORMAT or ck.get("fingerprint") != print_:
        return f"{where} was written for another stack or format"
    if ck.get("numeric_path", "") != path:
        return (
            f"{where} was trained on the {ck.get('numeric_path') or 'unrecorded'} conv-pool "
            f"path and this process runs the {path} one (MNISTLAB_NATIVE, a C compiler): they "
            "differ in the last bits, so resuming would mix two computations (set it back to "
            "resume)"
        )
    return None


def _progress_fields(history: list[dict[str, Any]], epoch: int) -> dict[str, float]:
    rows = [r for r in history if r["epoch"] == epoch]
    keys = [k for k in ("val_acc", "test_acc", "train_acc") if rows and k in rows[0]]
    return {keys[0]: sum(r[keys[0]] for r in rows) / len(rows)} if keys else {}
