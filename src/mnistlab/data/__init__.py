"""MNIST sources and verification, subsets and splits, deformations (no models here)."""

from mnistlab.data.deform import (
    DEFORMATIONS,
    KINDS,
    DeformParams,
    Expanded,
    deform_images,
    elastic,
    expand,
    zoom_out,
)
from mnistlab.data.mnist import COUNTS, SPLITS, MnistInfo, fetch, load_mnist, mnist_info
from mnistlab.data.subsets import (
    balanced_subset,
    check_disjoint,
    parse_digits,
    select_digits,
    stratified_kfold,
    stratified_split,
    unmap_labels,
)

__all__ = [
    "COUNTS",
    "DEFORMATIONS",
    "KINDS",
    "SPLITS",
    "DeformParams",
    "Expanded",
    "MnistInfo",
    "balanced_subset",
    "check_disjoint",
    "deform_images",
    "elastic",
    "expand",
    "fetch",
    "load_mnist",
    "mnist_info",
    "parse_digits",
    "select_digits",
    "stratified_kfold",
    "stratified_split",
    "unmap_labels",
    "zoom_out",
]
