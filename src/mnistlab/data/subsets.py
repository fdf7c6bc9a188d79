"""Index-level selections: balanced few-shot subsets, digit ranges, stratified splits and folds.

Everything returns *indices* (int64 tensors) into the arrays it was given, so callers keep one
uint8 copy of the images and slice it; nothing here copies pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from mnistlab.errors import MnistlabError


def _as_numpy(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    return labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def balanced_subset(
    labels: torch.Tensor | np.ndarray,
    n_per_class: int,
    seed: int,
    classes: Iterable[int] | None = None,
    exclude: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Exactly ``n_per_class`` indices of each class, chosen by ``seed``, sorted.

    Each class's candidates are put in one seeded order and the first ``n`` are taken, so for a
    fixed seed the 10-per-class set is inside the 30-per-class set (nested across sizes): a
    curve over sizes then measures size, not resampling noise. ``exclude`` removes indices
    first (e.g. a held-out validation split).
    """
    if n_per_class < 1:
        raise MnistlabError(f"images per class must be positive, got {n_per_class}")
    y = _as_numpy(labels)
    allowed = np.ones(len(y), dtype=bool)
    if exclude is not None:
        allowed[_as_numpy(exclude)] = False
    classes = sorted(set(y.tolist())) if classes is None else list(classes)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        # One permutation per class from the same generator, drawn in class order, so adding a
        # class to the list never changes the draws of the classes before it.
        pool = np.flatnonzero((y == c) & allowed)
        order = rng.permutation(len(pool))
        if n_per_class > len(pool):
            raise MnistlabError(
                f"class {c} has only {len(pool)} images available; "
                f"asked for {n_per_class} per class"
            )
        chosen.append(pool[order[:n_per_class]])
    return torch.from_numpy(np.sort(np.concatenate(chosen)).astype(np.int64))


def parse_digits(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``"0-4"``, ``"5,6,7"`` or a sequence → sorted unique digits, validated."""
    if isinstance(spec, str):
        digits: list[int] = []
        try:
            for part in spec.split(","):
                part = part.strip()
                if "-" in part:
                    lo, hi = (int(p) for p in part.split("-", 1))
                    if lo > hi:
                        raise MnistlabError(f"empty digit range {part!r}")
                    digits.extend(range(lo, hi + 1))
                elif part:
                    digits.append(int(part))
        except ValueError:
            raise MnistlabError(
                f"cannot parse digit range {spec!r} (use e.g. 0-4 or 5,6,7)"
            ) from None
    else:
        digits = [int(d) for d in spec]
    if not digits:
        raise MnistlabError(f"empty digit range {spec!r}")
    bad = [d for d in digits if not 0 <= d <= 9]
    if bad:
        raise MnistlabError(f"digits must be 0–9, got {bad}")
    if len(set(digits)) != len(digits):
        raise MnistlabError(f"digit range {spec!r} lists a digit twice")
    return tuple(sorted(digits))


def check_disjoint(a: Sequence[int], b: Sequence[int]) -> None:
    """Source and target digit ranges must not share a digit (that would leak the task)."""
    shared = sorted(set(a) & set(b))
    if shared:
        raise MnistlabError(f"digit ranges overlap on {shared}: source and target must be disjoint")


def select_digits(labels: torch.Tensor, digits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of images whose label is in ``digits`` and their labels remapped to 0..k-1.

    Remapping keeps the output layer k-way (digits 5–9 → labels 0–4); :func:`unmap_labels`
    undoes it for display.
    """
    digits = parse_digits(digits)
    lookup = torch.full((10,), -1, dtype=torch.int64)
    lookup[list(digits)] = torch.arange(len(digits))
    idx = torch.nonzero(lookup[labels] >= 0).flatten()
    return idx, lookup[labels[idx]]


def unmap_labels(remapped: torch.Tensor, digits: Sequence[int]) -> torch.Tensor:
    return torch.tensor(parse_digits(digits), dtype=torch.int64)[remapped]


def stratified_split(
    labels: torch.Tensor | np.ndarray, val_size: float | int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices with class proportions kept (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    y = _as_numpy(labels)
    try:
        tr, va = train_test_split(
            np.arange(len(y)), test_size=val_size, stratify=y, random_state=seed
        )
    except ValueError as exc:
        raise MnistlabError(f"cannot make a stratified validation split: {exc}") from None
    return torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va))


def stratified_kfold(
    labels: torch.Tensor | np.ndarray, k: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K stratified (train, validation) index pairs, shuffled by ``seed`` (scikit-learn)."""
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        raise MnistlabError(f"K-fold needs k >= 2, got {k}")
    y = _as_numpy(labels)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    return [(torch.from_numpy(tr), torch.from_numpy(va)) for tr, va in folds]
