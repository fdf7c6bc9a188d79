"""The training loops as they were before the engine (commit 595fa68), kept only as the
baseline of ``engine_bench.py``: one model at a time, ``torch.optim``, per-batch ``.item()``
free but per-model evaluation. Not used by the package.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

from mnistlab.models.stn import STNNet, to_input


def batch_indices(n: int, batch_size: int, generator: torch.Generator):
    yield from torch.randperm(n, generator=generator).split(batch_size)


def train_epoch(model, x, y, optimizer, *, batch_size, generator, transform=lambda t: t):
    model.train()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.int64)
    for idx in batch_indices(len(y), batch_size, generator):
        target = y[idx]
        logits = model(transform(x[idx]))
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == target).sum()
    return total_loss.item() / len(y), correct.item() / len(y)


@torch.inference_mode()
def evaluate(model, x, y, *, batch_size=2048, transform=lambda t: t):
    model.eval()
    logits = torch.cat(
        [model(transform(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )
    return F.cross_entropy(logits.float(), y).item(), (logits.argmax(1) == y).float().mean().item()


def adam_with_l2(model: nn.Module, lr: float, l2: float) -> torch.optim.Adam:
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                is_matrix = isinstance(module, nn.Linear | nn.Conv2d) and name == "weight"
                (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": l2}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


def fit(model, train, val, *, lr, l2, batch_size, max_epochs, patience, seed):
    """Early stopping on validation loss, best weights restored (the old ``fit``)."""
    optimizer = adam_with_l2(model, lr, l2)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    best_loss, best_epoch, best_state = float("inf"), 0, None
    for epoch in range(1, max_epochs + 1):
        train_epoch(model, *train, optimizer, batch_size=batch_size, generator=generator)
        val_loss, _ = evaluate(model, *val)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return best_epoch


def train_stn(use_stn, train, test, *, epochs, lr, batch_size, seed, train_eval_size):
    """The old STN study loop for one model and seed: SGD, eval on a train subset and test."""
    torch.manual_seed(seed)
    model = STNNet(use_stn)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    x, y = train
    sub = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    sub = sub[:train_eval_size]
    history = []
    for epoch in range(1, epochs + 1):
        train_epoch(
            model, x, y, optimizer, batch_size=batch_size, generator=generator, transform=to_input
        )
        _, tr = evaluate(model, x[sub], y[sub], transform=to_input)
        _, te = evaluate(model, *test, transform=to_input)
        history.append({"epoch": epoch, "train_acc": tr, "test_acc": te})
    return history


def train_head(head, train, val, test, *, lr, epochs, batch_size, seed):
    """The old few-shot head loop: Adam, val and test accuracy after every epoch."""
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        train_epoch(head, *train, optimizer, batch_size=batch_size, generator=generator)
        history.append(
            {
                "epoch": epoch,
                "val_acc": evaluate(head, *val)[1],
                "test_acc": evaluate(head, *test)[1],
            }
        )
    return history


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
