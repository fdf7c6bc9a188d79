import itertools

import numpy as np
import pytest
import torch

from mnistlab.data import (
    balanced_subset,
    check_disjoint,
    parse_digits,
    select_digits,
    stratified_kfold,
    stratified_split,
    unmap_labels,
)
from mnistlab.errors import MnistlabError

_GEN = torch.Generator().manual_seed(0)
LABELS = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=_GEN)]


def test_balanced_exact_counts_and_determinism():
    idx = balanced_subset(LABELS, 7, seed=3)
    assert len(idx) == 70 and len(set(idx.tolist())) == 70
    assert LABELS[idx].bincount(minlength=10).tolist() == [7] * 10
    assert torch.equal(idx, balanced_subset(LABELS, 7, seed=3))
    assert not torch.equal(idx, balanced_subset(LABELS, 7, seed=4))


def test_balanced_nested_across_sizes():
    sets = [set(balanced_subset(LABELS, n, seed=1).tolist()) for n in (5, 10, 30, 50)]
    for small, big in itertools.pairwise(sets):
        assert small < big


def test_balanced_exclude_and_oversize_error():
    excl = torch.arange(100)
    idx = balanced_subset(LABELS, 5, seed=0, exclude=excl)
    assert not set(idx.tolist()) & set(excl.tolist())
    with pytest.raises(MnistlabError, match=r"class 0 has only 50 images available; asked for 51"):
        balanced_subset(LABELS, 51, seed=0)
    with pytest.raises(MnistlabError, match="positive"):
        balanced_subset(LABELS, 0, seed=0)


def test_digit_ranges_remap_and_inverse():
    assert parse_digits("5-9") == (5, 6, 7, 8, 9)
    assert parse_digits("0,2, 4") == (0, 2, 4)
    labels = torch.tensor([0, 5, 9, 3, 7])
    idx, remapped = select_digits(labels, "5-9")
    assert idx.tolist() == [1, 2, 4] and remapped.tolist() == [0, 4, 2]
    assert unmap_labels(remapped, "5-9").tolist() == [5, 9, 7]
    for bad in ("", "9-5", "a-b", "3,3", "8-11"):
        with pytest.raises(MnistlabError):
            parse_digits(bad)
    with pytest.raises(MnistlabError, match="overlap on \\[4\\]"):
        check_disjoint(parse_digits("0-4"), parse_digits("4-9"))


def test_stratified_split_and_kfold():
    tr, va = stratified_split(LABELS, 0.2, seed=0)
    assert len(va) == 100 and not set(tr.tolist()) & set(va.tolist())
    assert LABELS[va].bincount(minlength=10).tolist() == [10] * 10
    folds = stratified_kfold(LABELS, 5, seed=0)
    seen = np.concatenate([va.numpy() for _, va in folds])
    assert sorted(seen.tolist()) == list(range(500))
    for _, va in folds:
        assert LABELS[va].bincount(minlength=10).tolist() == [10] * 10
    with pytest.raises(MnistlabError):
        stratified_kfold(LABELS, 1, seed=0)
