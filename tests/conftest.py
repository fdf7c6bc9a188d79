"""Shared fixtures: a persistent test cache for the real MNIST (downloaded once), tmp results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests use their own cache so they never depend on (or damage) a user's ~/.cache/mnistlab;
# it persists across runs so the real data set is fetched once per checkout.
os.environ.setdefault("MNISTLAB_CACHE", str(REPO / ".test-cache"))
os.environ.pop("MNISTLAB_DATA", None)
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def mnist():
    """The real, verified MNIST (train and test); skips only if no source can provide it."""
    from mnistlab.data import load_mnist
    from mnistlab.errors import MnistlabError

    try:
        return {"train": load_mnist("train"), "test": load_mnist("test")}
    except MnistlabError as exc:  # pragma: no cover - registries are reachable in CI
        pytest.skip(f"MNIST unavailable: {exc}")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty tool cache for tests that exercise the cache logic itself."""
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
