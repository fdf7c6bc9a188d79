"""Training on tensors held in memory: batches are index slices, never a per-item DataLoader.

Every model in this project trains on at most 180k small images, which fit in memory as uint8;
indexing a tensor costs microseconds where a DataLoader costs a Python call per image.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch from one number; return a generator for batch order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU — chosen once and passed down."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Shuffled (if a generator is given) index batches covering ``range(n)`` once."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class EpochStats:
    loss: float
    acc: float
    seconds: float


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator,
    transform: Transform = _identity,
) -> EpochStats:
    """One pass over (x, y) in shuffled mini-batches; returns the running loss and accuracy."""
    model.train()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=y.device)
    correct = torch.zeros((), dtype=torch.int64, device=y.device)
    for idx in batch_indices(len(y), batch_size, generator):
        idx = idx.to(y.device)
        target = y[idx]
        logits = model(transform(x[idx]))
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == target).sum()
    n = len(y)
    return EpochStats(total_loss.item() / n, correct.item() / n, time.perf_counter() - start)


@dataclass
class Evaluation:
    loss: float
    acc: float
    preds: torch.Tensor


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 2048, transform: Transform = _identity
) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [model(transform(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 2048,
    transform: Transform = _identity,
) -> Evaluation:
    """Loss, accuracy and predictions in eval mode (dropout off, batch-norm running stats)."""
    logits = predict_logits(model, x, batch_size=batch_size, transform=transform)
    loss = F.cross_entropy(logits.float(), y).item()
    preds = logits.argmax(1)
    return Evaluation(loss, (preds == y).float().mean().item(), preds.cpu())


class EarlyStopping:
    """Stop after ``patience`` epochs without a new best validation loss; remember the best.

    An epoch counts as an improvement only if it beats the best loss by more than
    ``min_delta``, so a loss creeping down by 1e-5 per epoch does not run to the epoch cap.
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_loss: float, model: nn.Module) -> bool:
        """Record the epoch; True when training should stop."""
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch = val_loss, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "best": self.best_state}

    def load_state_dict(self, d: dict) -> None:
        self.best_loss, self.best_epoch, self.best_state = (
            d["best_loss"],
            d["best_epoch"],
            d["best"],
        )
