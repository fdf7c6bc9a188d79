"""What both halves of the digits study share: the config, the data, the metrics, the model
files. (Its own module so that part 1, part 2 and the orchestration import it without
importing one another.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mnistlab.config import SEED_MAX, check_device, check_int, flag_of, option, validate
from mnistlab.data import (
    COUNTS,
    check_disjoint,
    load_mnist,
    parse_digits,
    select_digits,
    stratified_split,
)
from mnistlab.errors import MnistlabError
from mnistlab.models.mlp import MLP, MLPConfig
from mnistlab.progress import Progress
from mnistlab.stats import pack_correct
from mnistlab.train.checkpoint import load_checkpoint
from mnistlab.train.evaluate import predict, solo

STUDY = "digits"
VARIANTS = ("scratch", "frozen5", "cached5", "reuse4", "unfreeze2")
VARIANT_LABELS = {
    "scratch": "from scratch (no transfer)",
    "frozen5": "5 frozen reused layers",
    "cached5": "5 frozen layers, cached outputs",
    "reuse4": "4 frozen reused layers",
    "unfreeze2": "best + top two unfrozen",
}


@dataclass(frozen=True)
class DigitsConfig:
    """Every knob of the study; the results folder is the hash of all of them."""

    source_digits: str = option("0-4", "digits of the source task", cli="--source")
    target_digits: str = option("5-9", "digits of the transfer task", cli="--target")
    seed: int = option(0, "master seed", lo=0, hi=SEED_MAX)
    # Part 1: baseline pre-training
    val_fraction: float = option(
        0.1, "validation share of the source training set", cli="", lo=0, hi=0.5, open_lo=True
    )
    lr: float = option(1e-3, "Adam learning rate before tuning", cli="", lo=0, hi=10, open_lo=True)
    l2: float = option(1e-5, "L2 weight before tuning", cli="", lo=0, hi=1)
    batch_size: int = option(64, "mini-batch size before tuning", cli="", lo=1, hi=65_536)
    max_epochs: int = option(
        40, "epoch cap of part-1 training", unit="epochs", cli="--epochs", lo=1, hi=10_000
    )
    patience: int = option(
        5, "early-stopping patience of part 1", unit="epochs", cli="", lo=1, hi=10_000
    )
    checkpoint_every: int = option(
        5, "periodic checkpoint interval", unit="epochs", cli="", lo=1, hi=10_000
    )
    # Part 1: cross-validated tuning (Optuna TPE)
    trials: int = option(12, "Optuna trials", lo=1, hi=10_000)
    folds: int = option(3, "K of the stratified K-fold", lo=2, hi=min(COUNTS["train"]))
    tune_max_epochs: int = option(12, "epoch cap per fold while tuning", cli="", lo=1, hi=10_000)
    tune_patience: int = option(3, "early-stopping patience while tuning", cli="", lo=1, hi=10_000)
    # Part 1: batch norm and dropout
    target_val_acc: float = option(
        0.98, "validation accuracy 'converged' means", cli="", lo=0, hi=1
    )
    dropout_rates: tuple[float, ...] = option(
        (0.1, 0.2, 0.3, 0.5), "dropout rates", cli="", lo=0, hi=1, open_lo=True, open_hi=True
    )
    part1_seeds: int = option(
        3, "seeds of the batch-norm and dropout comparisons (paired)", cli="", lo=1, hi=100
    )
    # Part 2: transfer
    per_digit: int = option(100, "training images per target digit", unit="images", lo=1, hi=10**6)
    val_per_digit: int = option(200, "validation images per target digit", cli="", lo=1, hi=10**6)
    transfer_seeds: int = option(5, "transfer repeats (draws)", cli="--seeds", lo=1, hi=1000)
    transfer_batch_size: int = option(50, "mini-batch size of transfer", cli="", lo=1, hi=65_536)
    # The source-tuned lr (~1e-3) left the frozen heads still improving at a 300-epoch cap;
    # 1e-2 lets every variant stop by patience. One lr and one stopping rule for all variants.
    transfer_lr: float = option(
        1e-2, "Adam learning rate of transfer", cli="", lo=0, hi=10, open_lo=True
    )
    transfer_max_epochs: int = option(500, "epoch cap of transfer", cli="", lo=1, hi=100_000)
    transfer_patience: int = option(
        20, "early-stopping patience of transfer", cli="", lo=1, hi=100_000
    )
    transfer_min_delta: float = option(
        1e-3, "val-loss decrease that resets patience", cli="", lo=0, hi=1
    )
    unfreeze_lr_factor: float = option(
        0.1, "learning-rate factor when unfreezing", cli="", lo=0, hi=100, open_lo=True
    )
    device: str = option("auto", "auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps")
    # Tests only: keep the first N images of each split (None = all)
    limit: int | None = option(
        None, "use the first N images of each split", cli="hidden", lo=1, hi=sum(COUNTS["test"])
    )

    def __post_init__(self) -> None:
        validate(self)
        src, tgt = parse_digits(self.source_digits), parse_digits(self.target_digits)
        check_disjoint(src, tgt)
        if len(src) != len(tgt):
            raise MnistlabError(
                f"source {self.source_digits} and target {self.target_digits} must have the same "
                "number of digits (the reused layers feed a head of that width)"
            )
        if len(src) < 2:
            raise MnistlabError("a classification task needs at least two digits")
        smallest = min(COUNTS["train"][d] for d in src)
        check_int(self.folds, flag_of(self, "folds"), 2, smallest)
        check_device(self.device)
        self.check_target_counts(COUNTS["train"])

    def check_target_counts(self, counts: tuple[int, ...] | list[int]) -> None:
        """Enough training images of every target digit (``counts`` per digit 0–9)."""
        need = self.per_digit + self.val_per_digit
        for d in parse_digits(self.target_digits):
            if counts[d] < need:
                raise MnistlabError(
                    f"digit {d} has only {counts[d]} training images; {self.per_digit} per digit "
                    f"for training + {self.val_per_digit} for validation = {need} needed"
                )

    @property
    def n_classes(self) -> int:
        return len(parse_digits(self.source_digits))


def mlp_config(cfg: DigitsConfig, **kw) -> MLPConfig:
    """The study's 5×100 MLP for the source task (``kw``: batch_norm, dropout)."""
    return MLPConfig(n_classes=cfg.n_classes, **kw)


@dataclass
class Data:
    x_train: torch.Tensor  # uint8 [N, 28, 28]
    y_train: torch.Tensor  # labels remapped to 0..k-1
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(digits: str, limit: int | None = None, data_dir: Path | str | None = None) -> Data:
    """The images of ``digits`` (uint8, flattened to floats only per batch) with labels
    remapped to 0..k-1."""
    parts = []
    for split in ("train", "test"):
        images, labels = load_mnist(split, data_dir)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        idx, y = select_digits(labels, digits)
        parts += [images[idx], y]
    return Data(*parts)


def to_flat(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 28, 28]`` → float ``[..., 784]`` in [0, 1] (the MLP's input)."""
    return images.flatten(-2).float() / 255.0


def macro_precision(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    from sklearn.metrics import precision_score

    return float(precision_score(y_true.numpy(), y_pred.numpy(), average="macro", zero_division=0))


def test_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro precision and loss of a solo model (eval mode) on uint8 images."""
    logits = predict(model, x, to_flat)
    preds = logits.argmax(1)
    return {
        "test_correct": pack_correct((preds == y).numpy()),
        "test_n": len(y),
        "test_acc": float((preds == y).float().mean()),
        "test_precision": macro_precision(y, preds),
        "test_loss": float(torch.nn.functional.cross_entropy(logits, y)),
    }


def load_model(path: Path | str, expect: MLPConfig | None = None) -> MLP:
    """Rebuild an MLP from a standalone checkpoint (``best.pt``, ``final.pt``, ``epoch_N.pt``)."""
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise MnistlabError(f"{path} is not an mnistlab MLP checkpoint")
    try:
        config = MLPConfig.from_dict(state["config"])
    except TypeError:
        raise MnistlabError(f"{path} is a checkpoint of another architecture") from None
    if expect is not None and config != expect:
        raise MnistlabError(f"{path} holds a {config} model, expected {expect}")
    model = solo(MLP(config), state["model"], str(path))
    return model.eval()


@dataclass
class CellContext:
    """What every part gets: the config, the run folder, data on demand, other parts' results."""

    cfg: DigitsConfig
    out: Path
    device: torch.device
    progress: Progress
    data_dir: Path | str | None
    result: Callable[[str], dict]  # another part's (or variant's) result, computed if needed
    storage: str | None = None  # a shared Optuna database URL for the tuning (--storage)
    _source: Data | None = None

    @property
    def source(self) -> Data:
        if self._source is None:
            self._source = load_digits(self.cfg.source_digits, self.cfg.limit, self.data_dir)
        return self._source


def source_split(ctx: CellContext) -> tuple[torch.Tensor, torch.Tensor]:
    return stratified_split(ctx.source.y_train, ctx.cfg.val_fraction, seed=ctx.cfg.seed)
