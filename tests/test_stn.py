import math

import pytest
import torch

from mnistlab.errors import MnistlabError
from mnistlab.models.stn import STNNet
from mnistlab.progress import Progress, Task
from mnistlab.studies.opening import Env
from mnistlab.studies.stn import common, theta
from mnistlab.studies.stn import deform as stn_deform
from mnistlab.studies.stn import tutorial as stn


def test_identity_initialisation_gives_identity_warp():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    model = STNNet(True).eval()
    warped, theta = model.transform(x)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3))
    torch.testing.assert_close(warped, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "params",
    [
        (0, 1, 1, 0, 0, 0),
        (30, 1, 1, 0, 0.1, -0.2),
        (-12, 0.5, 0.8, 0.3, 0, 0),
        (90, 2, 0.25, -0.4, 0.5, 0.5),
    ],
)
def test_theta_decomposition_recovers_synthetic_transforms(params):
    parts = theta.decompose_theta(theta.compose_theta(*params))
    got = [parts[k].item() for k in ("rotation_deg", "scale_x", "scale_y", "shear", "tx", "ty")]
    for g, want in zip(got, params, strict=True):
        assert math.isclose(g, want, abs_tol=1e-4)


def test_deformation_list_is_derived_from_numbers():
    from mnistlab.report.sections.stn.tutorial import deformation_bullets, learned_in_seeds

    th = torch.cat(
        [theta.compose_theta(20 if i % 2 else -20, 0.5, 0.5, 0, 0, 0) for i in range(200)]
    )
    stats = theta.deformation_stats(theta.decompose_theta(th))
    assert stats["rotation"]["learned"] and stats["zoom"]["learned"]
    assert not stats["shear"]["learned"] and not stats["translation"]["learned"]
    plain = theta.deformation_stats(theta.decompose_theta(theta.compose_theta(0, 1, 1, 0, 0, 0)))
    used = learned_in_seeds([stats, plain])
    assert used["rotation"] == 1 and used["shear"] == 0
    lines = deformation_bullets(used, [stats, plain])
    assert any(line.startswith("zoom: used in 1 of 2 seeds") for line in lines)
    assert any("mean θ scale 0.500–1.000" in line for line in lines)


TINY = dict(epochs=2, seeds=2, limit_train=512, limit_test=256, train_eval_size=128, device="cpu")


def test_stn_study_end_to_end_and_no_retrain(tmp_path, mnist):
    cfg = stn.STNConfig(**TINY)
    m = stn.run(cfg, tmp_path)
    a = m["models"]["stn"]
    assert 0 <= a["primary"]["all"][0] <= 1 and len(a["per_seed_primary"]["all"]) == 2
    assert len(m["deformations_by_seed"]) == 2
    assert set(m["deformations_by_seed"][1]) == {
        "rotation",
        "zoom",
        "anisotropy",
        "shear",
        "translation",
    }
    for f in ("theta_hist", "theta_examples", "accuracy_curves", "theta_by_seed", "metrics"):
        assert (tmp_path / f"{f}.json" if f == "metrics" else tmp_path / f"{f}.png").is_file()
    mtime = (tmp_path / "metrics.json").stat().st_mtime_ns
    stn.run(cfg, tmp_path)  # finished: loaded, not retrained
    assert (tmp_path / "metrics.json").stat().st_mtime_ns == mtime


class _Interrupt(Progress):
    """Raises KeyboardInterrupt after ``after`` progress steps (a Ctrl-C mid-study)."""

    def __init__(self, after):
        self.left = after

    def task(self, description, total):
        outer = self

        class T(Task):
            def advance(self, n=1, **fields):
                outer.left -= n
                if outer.left < 0:
                    raise KeyboardInterrupt

        return T()


def test_stn_study_resumes_to_the_same_numbers(tmp_path, mnist):
    cfg = stn.STNConfig(**TINY)
    ref = stn.run(cfg, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):  # mid-way through the STN's second epoch
        stn.run(cfg, tmp_path / "run", Env(progress=_Interrupt(12)))
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = stn.run(cfg, tmp_path / "run")
    for model in ("stn", "baseline"):
        for key in ("per_seed_primary", "per_seed_final", "curves_by_seed"):
            assert resumed["models"][model][key] == ref["models"][model][key]
    for key in ("deformations_by_seed", "theta_by_seed", "ablation"):
        assert resumed[key] == ref[key]


def test_stn_deform_end_to_end(tmp_path, mnist, tmp_cache):
    cfg = stn_deform.STNDeformConfig(
        epochs=1, limit_train=300, limit_test=100, train_eval_size=200, device="cpu"
    )
    m = stn_deform.run(cfg, tmp_path)
    assert m["n_train"] == 900 and m["n_test"] == 300
    assert set(m["models"]["stn"]["primary"]) == {"all", "original", "elastic", "zoom"}
    assert m["test_kind_counts"] == [100, 100, 100]
    assert len(m["magnification"]["per_seed"]) == cfg.seeds
    for f in ("accuracy_curves.png", "deform_examples.png", "scale_by_kind.png"):
        assert (tmp_path / f).is_file()


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"lr": float("nan")},
        {"lr": -0.01},
        {"seed": 2**70},
        {"seed": -1},
        {"batch_size": 10**20},
        {"optimizer": "rmsprop"},
        {"device": "bogus"},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(MnistlabError):
        stn.STNConfig(**bad)


# --------------------------------------------------------------- the primary score and θ


def test_primary_score_is_the_mean_of_the_last_epochs_and_flips_the_verdict(tmp_path, mnist):
    """The score is read from a real tiny run's history; the report's verdict follows it."""
    cfg = stn.STNConfig(**{**TINY, "epochs": 3, "score_epochs": 2})
    m = stn.run(cfg, tmp_path)
    a = m["models"]
    for model in ("stn", "baseline"):
        for k in range(2):
            curve = a[model]["curves_by_seed"]["test_acc"][k]
            assert a[model]["per_seed_primary"]["all"][k] == pytest.approx(sum(curve[-2:]) / 2)
            assert a[model]["per_seed_final"]["all"][k] == curve[-1]
    from mnistlab.report.sections.stn.common import verdict

    m["models"]["stn"]["per_seed_primary"]["all"] = [0.99, 0.985, 0.98]
    m["models"]["baseline"]["per_seed_primary"]["all"] = [0.95, 0.946, 0.94]
    better = verdict(m, "all")
    assert better.significant and better.diff > 0
    (
        m["models"]["stn"]["per_seed_primary"]["all"],
        m["models"]["baseline"]["per_seed_primary"]["all"],
    ) = [0.95, 0.946, 0.94], [0.99, 0.985, 0.98]
    worse = verdict(m, "all")
    assert worse.significant and worse.diff < 0


def test_theta_ablations_on_a_tiny_run(tmp_path, mnist):
    """Identity θ scores exactly what the classifier scores on unwarped images; the image's
    own θ scores what the history recorded for that epoch."""
    cfg = stn.STNConfig(**TINY)
    m = stn.run(cfg, tmp_path)
    ab = m["ablation"]
    assert ab["variants"] == ["stn", "identity", "kind_mean", "shuffled"]
    x, y = mnist["test"][0][: cfg.limit_test], mnist["test"][1][: cfg.limit_test]
    from mnistlab.models.stn import STNNet, to_input
    from mnistlab.train.checkpoint import load_checkpoint
    from mnistlab.train.evaluate import predict, solo

    for k, seed in enumerate(m["models"]["stn"]["seeds"]):
        identity, own = 0.0, 0.0
        for e in ab["epochs"]:
            state = load_checkpoint(common.scored_weights(tmp_path, seed, e))["model"]
            net = solo(STNNet(True), state)
            logits = predict(net, x, to_input, call=lambda v, n=net: n.classifier(n.normalise(v)))
            identity += float((logits.argmax(1) == y).float().mean()) / len(ab["epochs"])
            own += float((predict(net, x, to_input).argmax(1) == y).float().mean())
        assert ab["per_seed"]["identity"]["all"][k] == pytest.approx(identity, abs=1e-6)
        assert ab["per_seed"]["stn"]["all"][k] == pytest.approx(own / len(ab["epochs"]), abs=1e-6)


def test_theta_probe_records_every_epoch_and_magnification_reads_it():
    rows = [
        {"theta_scale_original": 1.0, "theta_scale_zoom": 0.5},
        {"theta_scale_original": 0.9, "theta_scale_zoom": 0.3},
    ]
    assert theta.magnification(rows) == pytest.approx(math.sqrt(2.0 * 3.0))
    kinds = torch.tensor([0, 1, 0, 1, 1])
    perm = theta.shuffle_within(kinds, seed=3)
    assert sorted(perm.tolist()) == list(range(5)) and torch.equal(kinds[perm], kinds)
    assert theta.probe_set(kinds, 1).tolist() == [0, 1]


def test_stn_curves_are_drawn_per_seed(tmp_path):
    from mnistlab.figures import stn as figures

    curves = {
        m: {"train_eval_acc": [[0.9, 0.95], [0.91, 0.96]], "test_acc": [[0.9, 0.94], [0.9, 0.97]]}
        for m in ("stn", "baseline")
    }
    figures.seed_curves(tmp_path, curves, "t")
    assert (tmp_path / "accuracy_curves.png").stat().st_size > 1000


# --------------------------------------------------------------- stn-best


def test_the_best_recipes_validation_keeps_a_digit_with_its_copies():
    from mnistlab.studies.stn import best

    cfg = best.STNBestConfig(search_digits=5, val_digits=3)
    fit, val = best.split(10, cfg)
    assert fit.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
    assert val.tolist() == [7, 8, 9, 17, 18, 19, 27, 28, 29]
    assert not set(fit.tolist()) & set(val.tolist())
    assert {i % 10 for i in fit.tolist()}.isdisjoint({i % 10 for i in val.tolist()})


def test_the_best_recipe_search_never_reads_the_test_set(tmp_path, mnist, tmp_cache):
    """Re-run with the test labels shuffled: the same scores and the same choice."""
    from unittest import mock

    from mnistlab.progress import Progress
    from mnistlab.studies.stn import best

    cfg = best.STNBestConfig(
        epochs=1, seeds=1, limit_train=150, limit_test=60, train_eval_size=50,
        search_digits=60, val_digits=60, search_epochs=1, recipes=("tutorial", "cosine-loc0.1"),
        device="cpu",
    )  # fmt: skip
    cpu = torch.device("cpu")
    first = best.search(cfg, tmp_path / "a", None, cpu, Progress())
    real = best.expanded

    def shuffled(split, *a, **k):
        out = real(split, *a, **k)
        if split == "test":
            out.labels.copy_(out.labels[torch.randperm(len(out.labels))])
        return out

    with mock.patch.object(best, "expanded", shuffled):
        again = best.search(cfg, tmp_path / "b", None, cpu, Progress())
    assert first["chosen"] == again["chosen"] and first["grid"] == again["grid"]
    assert [r["recipe"] for r in first["grid"]] == ["tutorial", "cosine-loc0.1"]
