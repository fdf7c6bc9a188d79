"""The best honest protocols: every choice from training images only, never from test labels."""

import pytest
import torch

from mnistlab import registry
from mnistlab.studies.digits import best as digits_best
from mnistlab.studies.digits import best_transfer
from mnistlab.studies.fewshot import best as fewshot_best
from mnistlab.train.probes import fit_probes

# The registry's tiny profile (the test suite's runs) of both best protocols.
FEWSHOT = {**registry.get("fewshot-best").tiny, "device": "cpu"}
DIGITS = {**registry.get("digits-best").tiny, "device": "cpu"}


@pytest.fixture
def garbage_test_labels(monkeypatch):
    """Every study's test labels replaced by a seeded shuffle of themselves."""
    from mnistlab.data import mnist as m

    real = m.load_mnist

    def load(split, data_dir=None):
        images, labels = real(split, data_dir)
        if split == "test":
            labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(9))]
        return images, labels

    for module in (
        "mnistlab.data",
        "mnistlab.studies.fewshot.pool",
        "mnistlab.studies.digits.common",
        "mnistlab.studies.digits.best",
    ):
        mod = __import__(module, fromlist=["load_mnist"])
        if hasattr(mod, "load_mnist"):
            monkeypatch.setattr(mod, "load_mnist", load)


def _interrupted_on(monkeypatch, module, name: str, call: int):
    """``module.name`` raises KeyboardInterrupt on its ``call``-th call (1-based)."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return real


def _numbers(metrics: dict) -> dict:
    """A run's results without its timings (wall clocks differ between runs)."""
    if isinstance(metrics, dict):
        return {
            k: _numbers(v)
            for k, v in metrics.items()
            if "seconds" not in k and k not in ("wall", "started")
        }
    if isinstance(metrics, list):
        return [_numbers(v) for v in metrics]
    return metrics


def _fewshot_choices(metrics):
    return {name: [row["chosen"] for row in r["table"]] for name, r in metrics["backbones"].items()}


def test_fewshot_best_chooses_on_validation_only_and_resumes(
    tmp_path, mnist, tmp_cache, request, monkeypatch
):
    cfg = fewshot_best.FewshotBestConfig(**FEWSHOT)
    m = fewshot_best.run(cfg, tmp_path / "a")
    table = m["backbones"]["resnet18"]["table"]
    assert [row["size"] for row in table] == [2, 4] and all(row["seeds"] == 2 for row in table)
    assert all(0 <= row["test_acc"][0] <= 1 for row in table)
    assert (tmp_path / "a" / "search.json").is_file()  # every seed's choice is stored
    real = _interrupted_on(monkeypatch, fewshot_best, "_probe_grid", 2)  # in the second size
    with pytest.raises(KeyboardInterrupt):
        fewshot_best.run(cfg, tmp_path / "resumed")
    monkeypatch.setattr(fewshot_best, "_probe_grid", real)
    assert _numbers(fewshot_best.run(cfg, tmp_path / "resumed")) == _numbers(m)
    request.getfixturevalue("garbage_test_labels")
    g = fewshot_best.run(cfg, tmp_path / "b")
    assert _fewshot_choices(g) == _fewshot_choices(m)  # same choices, other test scores


def test_probe_fits_match_the_primal_solution():
    """The kernel (span-of-the-data) fit reaches the optimum of plain L-BFGS on the primal loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 100, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (1, 40), generator=g)
    lam = 1.0 / 40

    def objective(w, b):
        return torch.nn.functional.cross_entropy(x[0] @ w.T + b, y[0]) + lam / 2 * w.square().sum()

    w, b = fit_probes(x, y, (1.0,), 500)
    wp = torch.zeros(10, 100, dtype=torch.float64, requires_grad=True)
    bp = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [wp, bp],
        max_iter=2000,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
    )

    def closure():
        opt.zero_grad()
        loss = objective(wp, bp)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        gap = float(objective(w[0, 0], b[0, 0]) - objective(wp, bp))
    # fit_probes stops at a practical tolerance: the objectives agree to 1e-6, and strong
    # convexity (λ = 1/40) bounds the weight error by sqrt(2·gap/λ).
    assert -1e-9 < gap < 1e-6
    assert float((w[0, 0] - wp.detach()).norm()) <= (2 * 1e-6 / lam) ** 0.5


def test_digits_best_chooses_on_validation_only_and_resumes(tmp_path, mnist, request, monkeypatch):
    from mnistlab.studies.digits import tune

    cfg = digits_best.DigitsBestConfig(**DIGITS)
    m = digits_best.run(cfg, tmp_path / "a")
    assert set(m["transfer"]) == {"frozen5", "reuse4", "unfreeze2"}
    assert "best" in m["source"] and "searched" in m["sources"]
    assert len(m["sources"]) == 1 + len(cfg.source_l2s) * len(cfg.source_augments)
    for v in ("frozen5", "reuse4"):  # the source is chosen among all of them, per variant
        assert set(m["transfer"][v]["source_val_acc"]) == set(m["sources"])
    real = _interrupted_on(monkeypatch, tune, "run_trial", 2)  # in the search's second trial
    with pytest.raises(KeyboardInterrupt):
        digits_best.run(cfg, tmp_path / "resumed")
    monkeypatch.setattr(tune, "run_trial", real)
    real = _interrupted_on(monkeypatch, best_transfer, "_unfreeze", 1)  # in the transfer grid
    with pytest.raises(KeyboardInterrupt):
        digits_best.run(cfg, tmp_path / "resumed")
    monkeypatch.setattr(best_transfer, "_unfreeze", real)
    assert _numbers(digits_best.run(cfg, tmp_path / "resumed")) == _numbers(m)
    request.getfixturevalue("garbage_test_labels")
    g = digits_best.run(cfg, tmp_path / "b")
    assert g["search"]["params"] == m["search"]["params"]
    for v in m["transfer"]:
        assert g["transfer"][v]["chosen"] == m["transfer"][v]["chosen"]
