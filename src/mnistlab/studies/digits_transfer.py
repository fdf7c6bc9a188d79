"""Digits study, part 2: transfer from the 0–4 model to digits 5–9 with 100 images per digit.

Variants (same data per seed, same stopping rule): the MLP from scratch, the five pretrained
hidden layers frozen with a new output layer, the same with the frozen stack's outputs cached,
four reused layers, and the better frozen variant with its top two layers unfrozen.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from mnistlab.data import balanced_subset, parse_digits
from mnistlab.errors import MnistlabError
from mnistlab.models.mlp import MLP, MLPConfig, build_mlp, xavier_init
from mnistlab.models.state import load_state_strict
from mnistlab.stats import mean_ci
from mnistlab.studies.digits import (
    VARIANT_LABELS,
    Data,
    DigitsConfig,
    load_digits,
    load_model,
    macro_precision,
)
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.fit import FitConfig, FitResult, fit
from mnistlab.train.loop import evaluate


class Reused(nn.Module):
    """The first ``n_layers`` hidden blocks of a pretrained MLP, frozen, plus a new head.

    ``train()`` keeps the frozen blocks in eval mode, so batch-norm statistics or dropout in a
    reused stack are never touched; ``unfreeze(k)`` makes the top ``k`` reused blocks trainable.
    """

    def __init__(self, source: MLP, n_layers: int, n_classes: int, seed: int):
        super().__init__()
        self.stack = nn.ModuleList(copy.deepcopy(list(source.hidden[:n_layers])))
        width = source.config.hidden[n_layers - 1]
        self.head = new_head(width, n_classes, seed)
        self.trainable_from = n_layers  # blocks with index >= this train
        self.stack.requires_grad_(False)

    def unfreeze(self, k: int) -> None:
        self.trainable_from = len(self.stack) - k
        for block in self.stack[self.trainable_from :]:
            block.requires_grad_(True)

    def train(self, mode: bool = True) -> Reused:
        super().train(mode)
        for block in self.stack[: self.trainable_from]:
            block.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.stack:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def new_head(width: int, n_classes: int, seed: int) -> nn.Linear:
    """A fresh Xavier-initialised output layer; the same seed gives the same layer."""
    head = nn.Linear(width, n_classes)
    xavier_init(head, torch.Generator().manual_seed(seed))
    return head


@dataclass
class TransferData:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def transfer_split(cfg: DigitsConfig, target: Data, seed: int) -> TransferData:
    """``per_digit`` training images per target digit, a disjoint validation set, full test."""
    tr = balanced_subset(target.y_train, cfg.per_digit, seed=seed)
    va = balanced_subset(target.y_train, cfg.val_per_digit, seed=seed + 10_000, exclude=tr)
    return TransferData(
        (target.x_train[tr], target.y_train[tr]),
        (target.x_train[va], target.y_train[va]),
        (target.x_test, target.y_test),
    )


def _transfer_fit_cfg(cfg: DigitsConfig, hp: dict, lr: float | None = None) -> FitConfig:
    """The same stopping rule for every variant: patience on validation loss, epoch cap."""
    return FitConfig(
        lr=lr or cfg.transfer_lr,
        l2=hp["l2"],
        batch_size=cfg.transfer_batch_size,
        max_epochs=cfg.transfer_max_epochs,
        patience=cfg.transfer_patience,
        min_delta=cfg.transfer_min_delta,
        eval_train=False,
    )


def _scores(model: nn.Module, td: TransferData, res: FitResult, seconds: float) -> dict:
    ev = evaluate(model, *td.test)
    return {
        "test_acc": ev.acc,
        "test_precision": macro_precision(td.test[1], ev.preds),
        "val_acc": evaluate(model, *td.val).acc,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds": seconds,
    }


def _load_source(cfg, out, deps) -> tuple[MLP, str]:
    deps("tune")
    path = out / "tune" / "model.pt"
    return load_model(path, MLPConfig(n_classes=len(parse_digits(cfg.source_digits)))), str(
        path.relative_to(out)
    )


def run_variant(
    variant: str,
    source: MLP,
    td: TransferData,
    cfg: DigitsConfig,
    hp: dict,
    seed: int,
    base: nn.Module | None = None,
) -> tuple[nn.Module, dict]:
    """Train one transfer variant for one seed; return the model and its scores."""
    n_classes = len(parse_digits(cfg.target_digits))
    fcfg = _transfer_fit_cfg(cfg, hp)
    t0 = time.perf_counter()
    if variant == "scratch":
        model: nn.Module = build_mlp(replace(source.config, n_classes=n_classes), seed=seed)
    elif variant in ("frozen5", "reuse4"):
        model = Reused(source, 5 if variant == "frozen5" else 4, n_classes, seed)
    elif variant == "cached5":
        frozen = Reused(source, 5, n_classes, seed).eval()
        with torch.inference_mode():  # the frozen stack's output, once per image
            feats = [frozen.features(x) for x in (td.train[0], td.val[0], td.test[0])]
        feats = [f.clone() for f in feats]  # leave inference mode: plain tensors for autograd
        head = new_head(feats[0].shape[1], n_classes, seed)
        cached = TransferData(
            (feats[0], td.train[1]), (feats[1], td.val[1]), (feats[2], td.test[1])
        )
        res = fit(head, cached.train, cached.val, fcfg, seed=seed)
        seconds = time.perf_counter() - t0
        frozen.head = head
        return frozen, _scores(head, cached, res, seconds)
    elif variant == "unfreeze2":
        assert base is not None
        model = copy.deepcopy(base)
        model.unfreeze(2)
        fcfg = _transfer_fit_cfg(cfg, hp, lr=cfg.transfer_lr * cfg.unfreeze_lr_factor)
    else:  # pragma: no cover - guarded by VARIANTS
        raise MnistlabError(f"unknown variant {variant!r}")
    res = fit(model, td.train, td.val, fcfg, seed=seed)
    return model, _scores(model, td, res, time.perf_counter() - t0)


def part_variant(variant: str, cfg: DigitsConfig, out, progress, deps) -> dict:
    """All seeds of one variant; ``deps(name)`` returns (computing if needed) another part."""
    hp = deps("tune")["best"]
    source, source_path = _load_source(cfg, out, deps)
    target = load_digits(cfg.target_digits, cfg.limit)
    folder = out / "transfer"
    extra: dict[str, Any] = {}
    base_variant = None
    if variant == "unfreeze2":
        val = {
            v: mean_ci([s["val_acc"] for s in deps(v)["seeds"]])[0] for v in ("frozen5", "reuse4")
        }
        base_variant = max(val, key=val.get)  # chosen on validation accuracy, never on test
        extra = {"base_variant": base_variant, "base_val_acc": val}
    seeds = []
    task = progress.task(f"digits: transfer {variant}", cfg.transfer_seeds)
    for s in range(cfg.transfer_seeds):
        seed = cfg.seed + s
        td = transfer_split(cfg, target, seed)
        base = None
        if base_variant is not None:
            n_classes = len(parse_digits(cfg.target_digits))
            base = Reused(source, 5 if base_variant == "frozen5" else 4, n_classes, seed)
            load_state_strict(
                base,
                load_checkpoint(folder / "models" / f"{base_variant}_seed{seed}.pt")["model"],
                base_variant,
            )
        model, scores = run_variant(variant, source, td, cfg, hp, seed, base)
        save_checkpoint(
            folder / "models" / f"{variant}_seed{seed}.pt",
            {"model": model.state_dict(), "variant": variant, "seed": seed},
        )
        seeds.append({"seed": seed, **scores})
        task.advance(1, test_acc=scores["test_acc"])
    task.done()
    summary = {
        k: mean_ci([s[k] for s in seeds])
        for k in ("test_acc", "test_precision", "val_acc", "seconds", "best_epoch", "epochs_run")
    }
    return {
        "variant": variant,
        "label": VARIANT_LABELS[variant],
        "source_model": source_path,
        "hyperparameters": hp,
        "seeds": seeds,
        "summary": summary,
        "n_train": cfg.per_digit * len(parse_digits(cfg.target_digits)),
        "n_val": cfg.val_per_digit * len(parse_digits(cfg.target_digits)),
        "n_test": len(target.y_test),
        **extra,
    }
