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


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, whatever ran before it: a test that
    draws unseeded data then sees the same data alone, in any order, on every run (a tolerance
    check between two numeric paths once failed only after another test had moved the state)."""
    import torch

    torch.manual_seed(0)


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


# ------------------------------------------------------------------ real results for reports


@pytest.fixture(scope="session")
def results(tmp_path_factory, mnist):
    """A results root written by the real studies, both protocols and the opt-in ones, on
    the test suite's tiny profile (about a minute on 2 cores)."""
    from mnistlab import registry, runs

    root = tmp_path_factory.mktemp("results")
    folders = {}
    configs = registry.profile_configs("tiny", device="cpu", with_=registry.OPT_IN)
    for study, cfg in configs.items():
        folder = runs.run_dir(root, study, cfg)
        registry.get(study).run(cfg, folder)
        folders[study] = str(folder.relative_to(root))
    runs.write_json(
        root / runs.MANIFEST,
        {
            "profile": "quick",
            "command": "pytest",
            "finished": "now",
            "folders": folders,
            "wall_seconds": {},
        },
    )
    return root


def copy_study(results, tmp_path, study):
    """A private copy of one study's folder to edit."""
    import shutil

    from mnistlab import runs

    src = results / runs.read_json(results / runs.MANIFEST)["folders"][study]
    dst = tmp_path / study
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def edit_json(path: Path, change):
    """Change a verified JSON file (it is re-written with its digest)."""
    from mnistlab import runs

    obj = runs.read_json(path)
    change(obj)
    runs.write_json(path, obj)


def section_text(sec_or_list):
    """A report section's prose, bullets and table captions as one text."""
    secs = sec_or_list if isinstance(sec_or_list, list) else [sec_or_list]
    return "\n".join(
        line for s in secs for line in [*s.paragraphs, *s.bullets] + [t.caption for t in s.tables]
    )
