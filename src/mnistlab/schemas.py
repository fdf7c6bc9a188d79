"""What each study writes and the report reads, as types: one contract for both sides.

The studies annotate what they return with these; the report annotates what it reads; the test
suite runs every study on tiny data and checks its files against them with :func:`problems`,
so a renamed or retyped field fails there rather than as a KeyError in a report. A schema lists
the fields readers rely on; files may hold more. No torch here: the report imports it.
(No postponed annotations in this module: ``NotRequired`` must be seen when the class is made.)
"""

import types
import typing
from typing import Any, NotRequired, TypedDict, Union

MeanCI = tuple[float, float]  # mean and 95 % CI half-width over seeds (a JSON list)


class Hyper(TypedDict):
    lr: float
    l2: float
    batch_size: int


class TestScores(TypedDict):
    test_acc: float
    test_precision: float
    test_loss: float
    test_n: int
    test_correct: str  # packed bits: which test images were right (McNemar)


# ------------------------------------------------------------------------- few-shot


class FewshotRow(TypedDict):
    size: int
    seeds: int
    best_test_acc: MeanCI
    lowest_test_error: MeanCI
    epochs_to_best: MeanCI
    epochs_to_near_best: MeanCI
    val_selected_test_acc: MeanCI
    val_epoch_same_lr_test_acc: MeanCI
    per_seed_best_test_acc: list[float]
    per_seed_val_epoch_same_lr_test_acc: list[float]
    per_seed_val_selected_test_acc: NotRequired[list[float]]  # since results format 5


class FewshotBackbone(TypedDict):
    backbone: str
    weights_source: str
    weights_digest: str
    random_weights: bool
    precision: str
    device: str
    n_test: int
    table: list[FewshotRow]
    mean_curves: dict[str, list[float]]


class FewshotMetrics(TypedDict):
    backbones: dict[str, FewshotBackbone]
    skipped: dict[str, str]
    lr: float
    near_best: float


class FewshotBestRow(TypedDict):
    size: int
    seeds: int
    test_acc: MeanCI
    adam_test_acc: MeanCI
    per_seed_test_acc: list[float]
    per_seed_adam_test_acc: list[float]
    chosen: dict[str, int]
    ablation_drop: dict[str, MeanCI]


class FewshotBestBackbone(TypedDict):
    backbone: str
    weights_source: str
    random_weights: bool
    table: list[FewshotBestRow]
    views: NotRequired[dict[str, Any]]  # the augmented views searched: strengths, images, cost


class FewshotBestMetrics(TypedDict):
    backbones: dict[str, FewshotBestBackbone]
    skipped: dict[str, str]


# ------------------------------------------------------------------------- STN


class Deformation(TypedDict):
    learned: bool
    median: float
    p90: float
    threshold: float
    mean_scale: NotRequired[float]  # zoom
    mean_signed_deg: NotRequired[float]  # rotation


KindAcc = dict[str, MeanCI]  # all (every test image) / original / elastic / zoom
KindSeeds = dict[str, list[float]]  # per kind, one value per seed


class STNModel(TypedDict):
    seeds: list[int]
    epochs: int
    primary: KindAcc  # the verdicts' score: mean test accuracy over the scored epochs
    per_seed_primary: KindSeeds
    final: KindAcc  # the last epoch's (secondary: what the tutorial prints)
    per_seed_final: KindSeeds
    best: KindAcc
    train_primary: KindAcc
    curves_by_seed: dict[str, list[list[float]]]  # column → one curve per seed
    test_correct_by_seed: list[str]  # packed bits per seed: its final model, per test image
    stack_seconds: float


class Ablation(TypedDict):
    variants: list[str]  # stn (its own θ), identity, kind_mean, shuffled
    epochs: list[int]
    per_seed: dict[str, KindSeeds]  # variant → kind → accuracy per seed


class STNMetrics(TypedDict):
    """Both tutorial-STN studies (``stn``: one kind, ``all``; ``stn-deform``: per kind)."""

    kinds: list[str]
    score_epochs: int
    models: dict[str, STNModel]  # stn, baseline
    theta_by_seed: dict[str, list[list[float]]]  # theta_<stat>_<kind> → per seed, per epoch
    ablation: Ablation
    n_test: int
    n_train: int


class STNTutorialMetrics(STNMetrics):
    padding: str
    deformations_by_seed: list[dict[str, Deformation]]  # per seed: θ on every test image


class Magnification(TypedDict):
    per_seed: list[float]
    full_undo: float


class STNDeformMetrics(STNMetrics):
    sigma: float
    zoom_factor: float
    test_kind_counts: list[int]  # test images per kind, in the expanded test set's order
    magnification: Magnification
    deformations_by_seed: list[dict[str, dict[str, Deformation]]]


# ------------------------------------------------------------------------- digits


class PretrainResult(TestScores):
    hyperparameters: Hyper
    best_epoch: int
    checkpoints: list[str]


class TuneResult(TestScores):
    best: Hyper
    folds: int
    n_trials: int
    n_pruned: int
    cv_mean_acc: float
    cv_sd_acc: float
    retrain_epochs: int


class VariantSummary(TestScores):
    """One part-1 model (batch norm or not, a dropout rate)."""

    best_epoch: int
    epochs_run: int
    seconds: float
    epochs_to_target: int | None
    val_acc_at_best: float
    gap_acc_at_best: float
    gap_loss_at_best: float


class BatchnormResult(TypedDict):
    target_val_acc: float
    plain: VariantSummary  # the first seed (its curves are the figure's)
    batchnorm: VariantSummary
    seeds: list[int]
    by_seed: dict[str, list[VariantSummary]]  # plain / batchnorm → one per seed (paired)


class DropoutResult(TypedDict):
    rates: dict[str, VariantSummary]  # "0.0" is the model without dropout; first seed
    by_seed: dict[str, list[VariantSummary]]  # rate → one per seed (paired with "0.0")


class SourcesResult(TypedDict):
    """The tuned recipe retrained once per transfer seed (each transfer seed's source)."""

    seeds: list[TestScores]
    summary: dict[str, MeanCI]


class TransferSeed(TestScores):
    seed: int
    val_acc: float


class TransferSummary(TypedDict):
    test_acc: MeanCI
    test_precision: MeanCI
    val_acc: MeanCI
    seconds: MeanCI
    best_epoch: MeanCI
    epochs_run: MeanCI


class TransferResult(TypedDict):
    variant: str
    label: str
    n_train: int
    n_val: int
    n_test: int
    stack_seconds: float
    seeds: list[TransferSeed]
    summary: TransferSummary
    base_variant: NotRequired[str]  # unfreeze2: the frozen variant it continues


class PretrainSummary(TypedDict):
    test_acc: float
    test_precision: float
    best_epoch: int


class TuneSummary(TypedDict):
    best: Hyper
    cv_mean_acc: float
    test_acc: float
    test_precision: float


class DigitsMetrics(TypedDict, total=False):
    """The headline of every part (written when all parts have run)."""

    pretrain: PretrainSummary
    tune: TuneSummary
    scratch: TransferSummary
    frozen5: TransferSummary
    cached5: TransferSummary
    reuse4: TransferSummary
    unfreeze2: TransferSummary


# Each part's own result file in a digits run folder, and what the report reads from it.
DIGITS_FILES = {
    "pretrain/result.json": PretrainResult,
    "tune/result.json": TuneResult,
    "batchnorm/result.json": BatchnormResult,
    "dropout/result.json": DropoutResult,
    "sources/result.json": SourcesResult,
    **{f"transfer/{v}.json": TransferResult for v in ("scratch", "frozen5", "cached5")},
    **{f"transfer/{v}.json": TransferResult for v in ("reuse4", "unfreeze2")},
}


class DigitsBestSearch(TypedDict):
    params: dict[str, Any]
    n_trials: int
    n_pruned: int
    cv_acc: float
    epochs: int


class DigitsBestSource(TypedDict):
    hp: dict[str, Any]
    epochs: list[int]
    source_test_acc: list[float]
    seconds_per_model: float


class DigitsBestTransfer(TypedDict):
    seeds: list[int]
    test_acc: MeanCI
    per_seed_test_acc: list[float]
    chosen: dict[str, Any]
    ablation: dict[str, float]


class DigitsBestMetrics(TypedDict):
    search: DigitsBestSearch
    source: dict[str, TestScores]  # "best", "without <ingredient>"
    sources: dict[str, DigitsBestSource]  # the transfer sources, one model per seed each
    transfer: dict[str, DigitsBestTransfer]


# ------------------------------------------------------------------------- checking


def problems(value: Any, schema: Any, where: str = "$") -> list[str]:
    """Where ``value`` (parsed JSON) departs from ``schema``; empty when it conforms."""
    origin, args = typing.get_origin(schema), typing.get_args(schema)
    if schema is Any:
        return []
    if typing.is_typeddict(schema):
        return _typeddict(value, schema, where)
    if origin in (Union, types.UnionType):
        options = [problems(value, a, where) for a in args]
        return [] if any(not p for p in options) else options[0]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in problems(v, args[1], f"{where}.{k}")]
    if origin in (list, tuple):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        if origin is tuple and len(value) != len(args):
            return [f"{where}: expected {len(args)} items, got {len(value)}"]
        item = (lambda i: args[i]) if origin is tuple else (lambda i: args[0])
        return [p for i, v in enumerate(value) for p in problems(v, item(i), f"{where}[{i}]")]
    return _scalar(value, schema, where)


def _typeddict(value: Any, schema: type, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected an object, got {type(value).__name__}"]
    hints = typing.get_type_hints(schema)
    out = [f"{where}.{k}: missing" for k in schema.__required_keys__ if k not in value]
    for key, tp in hints.items():
        if key in value:
            out += problems(value[key], tp, f"{where}.{key}")
    return out


def _scalar(value: Any, schema: Any, where: str) -> list[str]:
    if schema is type(None):
        ok = value is None
    elif schema is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif schema is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, schema)
    return [] if ok else [f"{where}: expected {getattr(schema, '__name__', schema)}, got {value!r}"]
