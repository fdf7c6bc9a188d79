import math

import pytest
import torch

from mnistlab.errors import MnistlabError
from mnistlab.models.stn import STNNet
from mnistlab.progress import Progress, Task
from mnistlab.studies import stn, stn_deform
from mnistlab.studies.opening import Env


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
    parts = stn.decompose_theta(stn.compose_theta(*params))
    got = [parts[k].item() for k in ("rotation_deg", "scale_x", "scale_y", "shear", "tx", "ty")]
    for g, want in zip(got, params, strict=True):
        assert math.isclose(g, want, abs_tol=1e-4)


def test_deformation_list_is_derived_from_numbers():
    from mnistlab.report.sections import describe_deformations

    theta = torch.cat(
        [stn.compose_theta(20 if i % 2 else -20, 0.5, 0.5, 0, 0, 0) for i in range(200)]
    )
    stats = stn.deformation_stats(stn.decompose_theta(theta))
    assert stats["rotation"]["learned"] and stats["zoom"]["learned"]
    assert not stats["shear"]["learned"] and not stats["translation"]["learned"]
    lines = describe_deformations(stats)
    assert any(line.startswith("zoom: used") and "zoom-in of 2.00×" in line for line in lines)
    stats["zoom"]["mean_scale"] = 1.25
    assert "zoom-out of 1.25×" in describe_deformations(stats)[1]


TINY = dict(epochs=2, seeds=2, limit_train=512, limit_test=256, train_eval_size=128, device="cpu")


def test_stn_study_end_to_end_and_no_retrain(tmp_path, mnist):
    cfg = stn.STNConfig(**TINY)
    m = stn.run(cfg, tmp_path)
    assert 0 <= m["stn"]["final_test_acc"][0] <= 1 and len(m["stn"]["per_seed_final"]) == 2
    assert set(m["deformations"]) == {"rotation", "zoom", "anisotropy", "shear", "translation"}
    for f in ("theta_hist.png", "theta_examples.png", "accuracy_curves.png", "metrics.json"):
        assert (tmp_path / f).is_file()
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


def _numbers(m):
    return {k: m[k] for k in ("stn", "baseline", "deformations")}


def test_stn_study_resumes_to_the_same_numbers(tmp_path, mnist):
    cfg = stn.STNConfig(**TINY)
    ref = stn.run(cfg, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):  # mid-way through the STN's second epoch
        stn.run(cfg, tmp_path / "run", Env(progress=_Interrupt(12)))
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = stn.run(cfg, tmp_path / "run")
    for model in ("stn", "baseline"):
        for key in ("per_seed_final", "per_seed_best", "curves"):
            assert resumed[model][key] == ref[model][key]
    assert resumed["deformations"] == ref["deformations"]


def test_stn_deform_end_to_end(tmp_path, mnist, tmp_cache):
    cfg = stn_deform.STNDeformConfig(
        epochs=1, limit_train=300, limit_test=100, train_eval_size=200, device="cpu"
    )
    m = stn_deform.run(cfg, tmp_path)
    assert m["n_train"] == 900 and m["n_test"] == 300
    assert set(m["final_test_acc"]["stn"]) == {"all", "original", "elastic", "zoom"}
    assert m["test_kind_counts"] == [100, 100, 100]
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
