"""What a stack of the training engine is made of: the schedule every member shares, the
members themselves, the data they index into, and what a finished stack hands back (see
:mod:`mnistlab.train.engine`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mnistlab.models.stack import Step
from mnistlab.train.augment import Augment


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
    # (parameter-name prefix, multiplier) pairs of its SGD step, e.g. a slower localisation
    # network: (("localization.", 0.1), ("fc_loc.", 0.1)); on top of the architecture's own
    lr_scales: tuple[tuple[str, float], ...] = ()

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
class EpochInfo:
    """What an ``on_epoch`` callback sees after each epoch."""

    epoch: int
    rows: list[dict[str, Any]]  # this epoch's history rows (members still training)
    best_epoch: list[int]  # per member, by ``Schedule.monitor``
    improved: list[bool]  # per member: this epoch is its new best
    stack: Any  # the trainer's Stack (its parameters as solo states: ``stack.state(k)``)
    last: bool  # no further epoch will run


Prepare = Callable[[torch.Tensor], torch.Tensor]
OnEpoch = Callable[[EpochInfo], bool | None]
# After each epoch's evaluation: extra columns of every member's history row (e.g. statistics
# of the STN's θ on fixed images), so they are checkpointed and resumed with the history.
Measure = Callable[[Any], list[dict[str, float]]]  # the trainer's Stack → one dict per member


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for an index tensor of any shape (``index_select``: on the CPU much faster
    than advanced indexing with a 2-D index)."""
    return x.index_select(0, idx.flatten()).view(*idx.shape, *x.shape[1:])
