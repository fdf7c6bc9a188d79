"""``fit``: the one early-stopping training routine shared by the MLP experiments.

Adam with L2 applied as Adam's *coupled* ``weight_decay`` (λ·w added to the gradient, i.e. the
gradient of λ/2·‖w‖²) on weight matrices only — not AdamW's decoupled decay, and not on biases
or batch-norm parameters. Early stopping on validation loss; the best weights are restored.
Optional periodic checkpoints make a long run resumable: re-calling ``fit`` with the same
``ckpt_dir`` continues from the last checkpoint and ends with the same numbers as an
uninterrupted run (batch order and dropout RNG are part of the checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.progress import Progress
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.loop import EarlyStopping, evaluate, train_epoch

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class FitConfig:
    lr: float = 1e-3
    l2: float = 1e-5
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 5
    eval_train: bool = True  # eval-mode train metrics each epoch (for learning curves / gaps)
    restore_best: bool = True  # end with the best-validation-loss weights, not the last
    min_delta: float = 0.0  # smallest validation-loss decrease that counts as improvement


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def adam_with_l2(model: nn.Module, lr: float, l2: float) -> torch.optim.Adam:
    """Adam whose coupled weight decay (= L2 penalty) touches trainable weight matrices only."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_matrix = isinstance(module, nn.Linear | nn.Conv2d) and name == "weight"
            (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": l2}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: FitConfig,
    *,
    seed: int,
    ckpt_dir: Path | None = None,
    checkpoint_every: int = 0,
    model_config: dict | None = None,
    progress: Progress | None = None,
    description: str = "train",
    on_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``model`` in place with early stopping; return per-epoch history and timing."""
    progress = progress or Progress()
    optimizer = adam_with_l2(model, cfg.lr, cfg.l2)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    stopper = EarlyStopping(cfg.patience, cfg.min_delta)
    history: list[dict[str, float]] = []
    start_epoch, elapsed = 1, 0.0
    resume = ckpt_dir / "last.pt" if ckpt_dir else None
    if resume is not None and resume.is_file():
        state = load_checkpoint(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stopper.load_state_dict(state["stopper"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch, elapsed = state["history"], state["epoch"] + 1, state["seconds"]
        progress.message(f"{description}: resumed after epoch {state['epoch']}")
    task = progress.task(description, cfg.max_epochs)
    task.advance(start_epoch - 1)
    stopped = bool(history) and history[-1]["epoch"] - stopper.best_epoch >= cfg.patience
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.max_epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        stats = train_epoch(
            model, *train, optimizer, batch_size=cfg.batch_size, generator=generator
        )
        val_eval = evaluate(model, *val)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "val_loss": val_eval.loss,
            "val_acc": val_eval.acc,
        }
        if cfg.eval_train:
            tr_eval = evaluate(model, *train)
            row["train_eval_loss"], row["train_eval_acc"] = tr_eval.loss, tr_eval.acc
        stopped = stopper.update(epoch, val_eval.loss, model)
        elapsed += time.perf_counter() - t0
        row["seconds"] = elapsed
        history.append(row)
        task.advance(1, val_acc=val_eval.acc)
        if ckpt_dir is not None:
            _save_checkpoints(
                ckpt_dir,
                epoch,
                checkpoint_every,
                stopped or epoch == cfg.max_epochs,
                model,
                optimizer,
                stopper,
                generator,
                history,
                elapsed,
                model_config,
            )
        if on_epoch is not None:
            on_epoch(epoch)
    task.done()
    if cfg.restore_best and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    epochs_run = history[-1]["epoch"] if history else 0
    return FitResult(history, stopper.best_epoch, epochs_run, elapsed)


def _save_checkpoints(
    ckpt_dir: Path,
    epoch: int,
    every: int,
    final: bool,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stopper: EarlyStopping,
    generator: torch.Generator,
    history: list[dict[str, float]],
    elapsed: float,
    model_config: dict | None,
) -> None:
    """Periodic ``epoch_NNN.pt``, ``best.pt`` on improvement, ``final.pt`` at the end — each a
    standalone model file — plus ``last.pt``, the resume state, written with the periodic one."""

    def standalone(state: dict, which: str) -> dict:
        return {
            "config": model_config,
            "model": state,
            "epoch": epoch,
            "kind": which,
            "metrics": history[-1],
        }

    if stopper.best_epoch == epoch:
        save_checkpoint(ckpt_dir / "best.pt", standalone(stopper.best_state, "best"))
    periodic = every > 0 and epoch % every == 0
    if periodic:
        save_checkpoint(ckpt_dir / f"epoch_{epoch:03d}.pt", standalone(model.state_dict(), "epoch"))
    if periodic or final:
        save_checkpoint(
            ckpt_dir / "last.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "stopper": stopper.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "epoch": epoch,
                "seconds": elapsed,
            },
        )
    if final:
        save_checkpoint(ckpt_dir / "final.pt", standalone(model.state_dict(), "final"))
