import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mnistlab.cli import main
from mnistlab.models.stn import STNNet, to_input
from mnistlab.report.sections import describe_deformations, explain_deform
from mnistlab.studies import stn, stn_deform


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
    n = 200
    theta = torch.cat(
        [stn.compose_theta(20 if i % 2 else -20, 0.5, 0.5, 0, 0, 0) for i in range(n)]
    )
    stats = stn.deformation_stats(stn.decompose_theta(theta))
    assert stats["rotation"]["learned"] and stats["zoom"]["learned"]
    assert not stats["shear"]["learned"] and not stats["translation"]["learned"]
    lines = describe_deformations(stats)
    assert any(line.startswith("zoom: used") and "zoom-in of 2.00×" in line for line in lines)
    stats["zoom"]["mean_scale"] = 1.25
    assert "zoom-out of 1.25×" in describe_deformations(stats)[1]


class _Oracle(nn.Module):
    """Predicts the class written into pixel (0, 0)."""

    use_stn = False

    def forward(self, x):
        return nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long(), 10).float()


def test_per_kind_accuracy_bookkeeping():
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    kind = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([1, 0, 3, 4, 0, 0])  # original 1/2, elastic 2/2, zoom 0/2
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = predicted.to(torch.uint8)
    acc = stn.accuracy_by_kind(_Oracle(), images, labels, kind, torch.device("cpu"))
    assert acc == {"all": 0.5, "original": 0.5, "elastic": 1.0, "zoom": 0.0}


def test_two_batch_training_lowers_the_loss(mnist):
    x, y = mnist["train"][0][:128], mnist["train"][1][:128]
    torch.manual_seed(0)
    model = STNNet(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    model.eval()
    loss0 = nn.functional.cross_entropy(model(to_input(x)), y).item()
    for _ in range(8):
        model.train()
        for i in (0, 64):
            loss = nn.functional.cross_entropy(model(to_input(x[i : i + 64])), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    assert nn.functional.cross_entropy(model(to_input(x)), y).item() < loss0


@dataclass(frozen=True)
class _Cfg:
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    train_eval_size: int = 100
    device: str = "cpu"


def test_resume_after_interruption_matches_uninterrupted(tmp_path, mnist):
    tr = (mnist["train"][0][:256], mnist["train"][1][:256], None)
    te = (mnist["test"][0][:128], mnist["test"][1][:128], None)
    kw = dict(use_stn=True, train=tr, test=te, seed=3, progress=stn.Progress(), description="t")
    ref, ref_hist = stn.train_model(cfg=_Cfg(), ckpt=tmp_path / "a.pt", **kw)
    stn.train_model(cfg=_Cfg(epochs=1), ckpt=tmp_path / "b.pt", **kw)  # "killed" after epoch 1
    res, hist = stn.train_model(cfg=_Cfg(), ckpt=tmp_path / "b.pt", **kw)
    assert [r["test_acc_all"] for r in hist] == [r["test_acc_all"] for r in ref_hist]
    assert [r["train_loss"] for r in hist] == [r["train_loss"] for r in ref_hist]
    for a, b in zip(res.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_stn_study_end_to_end_and_no_retrain(tmp_path, mnist):
    cfg = stn.STNConfig(epochs=1, seeds=1, limit_train=512, limit_test=256, train_eval_size=128)
    m = stn.run(cfg, tmp_path)
    assert 0 <= m["stn"]["final_test_acc"][0] <= 1
    assert set(m["deformations"]) == {"rotation", "zoom", "anisotropy", "shear", "translation"}
    for f in ("theta_hist.png", "theta_examples.png", "accuracy_curves.png", "metrics.json"):
        assert (tmp_path / f).is_file()
    mtime = (tmp_path / "metrics.json").stat().st_mtime_ns
    stn.run(cfg, tmp_path)  # finished: loaded, not retrained
    assert (tmp_path / "metrics.json").stat().st_mtime_ns == mtime


def test_stn_deform_end_to_end(tmp_path, mnist, tmp_cache):
    cfg = stn_deform.STNDeformConfig(epochs=1, limit_train=300, limit_test=100, train_eval_size=200)
    m = stn_deform.run(cfg, tmp_path)
    assert m["n_train"] == 900 and m["n_test"] == 300
    assert set(m["final_test_acc"]["stn"]) == {"all", "original", "elastic", "zoom"}
    acc = {k: {n: v[0] for n, v in m["final_test_acc"][k].items()} for k in ("stn", "baseline")}
    lines = explain_deform(m["mean_scale_by_kind"], acc, m["zoom_factor"])
    assert lines[0].startswith("Zoom-out: the STN")
    for f in ("accuracy_curves.png", "deform_examples.png", "scale_by_kind.png"):
        assert (tmp_path / f).is_file()


def test_explanation_follows_the_numbers():
    acc = {
        "stn": {"zoom": 0.9, "elastic": 0.95, "original": 0.99},
        "baseline": {"zoom": 0.8, "elastic": 0.96, "original": 0.99},
    }
    undo = explain_deform({"original": 1.0, "zoom": 0.3, "elastic": 1.0}, acc, 4.0)
    assert "learned to undo much" in undo[0]
    none = explain_deform({"original": 1.0, "zoom": 0.98, "elastic": 1.0}, acc, 4.0)
    assert "did not learn" in none[0]
    assert "10.00 points better" in undo[1] and "1.00 points worse" in undo[2]
    acc["stn"]["zoom"] = 0.7  # undoing the zoom but losing accuracy is called out
    assert (
        "did not pay off" in explain_deform({"original": 1.0, "zoom": 0.3, "elastic": 1}, acc, 4)[1]
    )


def test_cli_unknown_option_exits_2(capsys):
    for argv in (["run", "stn", "--optimizer", "rmsprop"], ["run", "stn", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
