"""The STN paper's distorted MNIST: generators (ranges, determinism, conventions), the paper's
networks stacked, and the study end to end (tiny), resumed after an interruption."""

import pytest
import torch
from torch.nn import functional as F

from mnistlab.data.distort import DISTORTIONS, SIZES, distort
from mnistlab.errors import MnistlabError
from mnistlab.models.paper_stn import StackedPaperNet, init_paper_net
from mnistlab.models.stack import Step, stack_states
from mnistlab.studies.opening import Env
from mnistlab.studies.stn import paper as stn_paper
from mnistlab.studies.stn.theta import compose_theta
from tests.test_stn import _Interrupt


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist["test"][0][:1000], mnist["test"][1][:1000]


def test_drawn_parameters_stay_in_the_papers_ranges(digits):
    x, y = digits
    r = distort(x, y, "R", 0).params["angle_deg"]
    assert r.abs().max() <= 90 and r.min() < -80 and r.max() > 80  # the whole ±90° is used
    rts = distort(x, y, "RTS", 0).params
    assert rts["angle_deg"].abs().max() <= 45 and rts["angle_deg"].abs().max() > 40
    assert rts["scale"].min() >= 0.7 and rts["scale"].max() <= 1.2
    for kind, key, std in (("P", "corner_stretch_px", 5.0), ("E", "point_moves_px", 1.5)):
        p = distort(x, y, kind, 0).params
        assert p["scale"].min() >= 0.75 and p["scale"].max() <= 1.0
        assert abs(p[key].std().item() - std) < 0.1 * std and abs(p[key].mean().item()) < 0.1 * std


def test_rts_digits_lie_whole_on_the_42_pixel_canvas(digits):
    """No ink is cut off: the ink scales with the drawn scale's square (a digit pushed over
    the edge would lose a share of it)."""
    x, y = digits
    d = distort(x, y, "RTS", 3)
    assert d.images.shape == (1000, 42, 42)
    ink_in = x.double().sum((1, 2))
    ratio = d.images.double().sum((1, 2)) / (d.params["scale"].double() ** 2 * ink_in)
    assert ratio.min() > 0.9 and ratio.max() < 1.1
    anywhere = distort(x, y, "RTS", 3).params["shift_px"].abs().max()
    assert anywhere > 5  # the digits do move about the canvas


def test_distortions_are_fixed_by_seed_split_and_image(digits):
    x, y = digits
    for kind in DISTORTIONS:
        a = distort(x, y, kind, 5)
        assert a.images.shape[1:] == (SIZES[kind], SIZES[kind]) and a.images.dtype == torch.uint8
        assert torch.equal(a.images, distort(x, y, kind, 5).images)
        assert a.digest() == distort(x, y, kind, 5).digest()
        assert torch.equal(distort(x[:100], y[:100], kind, 5).images, a.images[:100])  # a prefix
        assert not torch.equal(distort(x, y, kind, 6).images, a.images)
        assert not torch.equal(distort(x, y, kind, 5, "test").images, a.images)


def test_distort_refuses_what_it_cannot_make(digits):
    x, y = digits
    with pytest.raises(MnistlabError, match="unknown distortion"):
        distort(x, y, "S", 0)
    with pytest.raises(MnistlabError, match="unknown split"):
        distort(x, y, "R", 0, "val")
    with pytest.raises(MnistlabError, match="uint8"):
        distort(x.float(), y, "R", 0)


def test_a_theta_rotation_of_minus_the_drawn_angle_undoes_r(digits):
    """The report reads 'undoing means learned = −drawn': check that convention on pixels."""
    x, y = digits
    d = distort(x[:50], y[:50], "R", 1)
    back = []
    for img, a in zip(d.images, d.params["angle_deg"], strict=True):
        theta = compose_theta(-float(a), 1, 1, 0, 0, 0)
        grid = F.affine_grid(theta, [1, 1, 28, 28], align_corners=False)
        back.append(F.grid_sample(img[None, None].float(), grid, align_corners=False)[0, 0])
    wrong = [
        F.grid_sample(
            img[None, None].float(),
            F.affine_grid(
                compose_theta(float(a), 1, 1, 0, 0, 0), [1, 1, 28, 28], align_corners=False
            ),
            align_corners=False,
        )[0, 0]
        for img, a in zip(d.images, d.params["angle_deg"], strict=True)
    ]

    def corr(imgs):
        a, b = torch.stack(imgs).flatten(1), x[:50].float().flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    assert corr(back).median() > 0.9 and corr(wrong).median() < 0.6


@pytest.mark.parametrize("size", [28, 42])
@pytest.mark.parametrize("use_stn", [False, True])
def test_stacked_paper_nets_equal_the_solo_nets(size, use_stn):
    nets = [init_paper_net(use_stn, size, s).eval() for s in range(3)]
    p = stack_states([n.state_dict() for n in nets])
    x = torch.rand(3, 8, 1, size, size)
    out = StackedPaperNet(use_stn, torch.device("cpu")).forward(p, x, Step(False))
    ref = torch.stack([n(x[i]) for i, n in enumerate(nets)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    if use_stn:  # the localisation network starts at the identity
        torch.testing.assert_close(
            nets[0].theta(x[0]), torch.eye(2, 3).expand(8, 2, 3), atol=0, rtol=0
        )


TINY = dict(epochs=2, seeds=2, limit_train=256, limit_test=64, device="cpu")


def test_stn_paper_study_runs_and_resumes_to_the_same_numbers(tmp_path, mnist):
    cfg = stn_paper.STNPaperConfig(**TINY)
    ref = stn_paper.run(cfg, tmp_path / "ref")
    assert ref["distortions"] == list(DISTORTIONS)
    for kind in DISTORTIONS:
        for model in stn_paper.MODELS:
            r = ref["results"][kind][model]
            assert len(r["per_seed_test_error"]) == 2 and len(r["test_acc_curve"]) == 2
    assert set(ref["theta"]["R"]) == {"mean_scale", "rotation", "theta_sd_by_seed"}
    assert set(ref["theta"]["RTS"]) == {"mean_scale", "rotation", "scale", "theta_sd_by_seed"}
    assert len(ref["theta"]["E"]["theta_sd_by_seed"]) == 2
    for f in ("paper_examples.png", "paper_learned_vs_drawn.png", "paper_error_curves.png"):
        assert (tmp_path / "ref" / f).is_file()
    with pytest.raises(KeyboardInterrupt):  # the sixth cell (P, ST-CNN), second epoch
        stn_paper.run(cfg, tmp_path / "run", Env(progress=_Interrupt(46)))
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = stn_paper.run(cfg, tmp_path / "run")
    for key in ("results", "theta", "test_digest"):
        assert _without_seconds(resumed[key]) == _without_seconds(ref[key])


def _without_seconds(obj):
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
    return obj


@pytest.mark.parametrize(
    "bad",
    [{"distortions": ("R", "X")}, {"distortions": ("R", "R")}, {"budget": "gpu"}, {"epochs": 0}],
)
def test_stn_paper_config_refuses_bad_values(bad):
    with pytest.raises(MnistlabError):
        stn_paper.STNPaperConfig(**bad)


def test_a_slower_localisation_network_takes_scaled_sgd_steps():
    from mnistlab.train.engine import _column_scale
    from mnistlab.train.optim import StackedOptimizer

    flat = torch.zeros(2, 4)
    opt = StackedOptimizer(
        flat,
        kind="sgd",
        lr=[0.1, 0.2],
        weight_decay=[0.0, 0.0],
        n_decay=0,
        column_scale=torch.tensor([1.0, 1.0, 0.1, 0.1]),
    )
    opt.grad.fill_(1.0)
    opt.step(torch.ones(2, dtype=torch.bool), (0, 1))
    torch.testing.assert_close(
        flat, -torch.tensor([[0.1, 0.1, 0.01, 0.01], [0.2, 0.2, 0.02, 0.02]])
    )
    with pytest.raises(ValueError, match="SGD only"):
        StackedOptimizer(
            flat,
            kind="adam",
            lr=[0.1, 0.1],
            weight_decay=[0, 0],
            n_decay=0,
            column_scale=torch.ones(4),
        )
    cpu = torch.device("cpu")
    names = ["classifier.fc.weight", "fc_loc.2.bias", "localization.0.weight"]
    scale = _column_scale(StackedPaperNet(True, cpu, 0.1), names, [2, 1, 3], cpu)
    torch.testing.assert_close(scale, torch.tensor([1.0, 1.0, 0.1, 0.1, 0.1, 0.1]))
    assert _column_scale(StackedPaperNet(True, cpu), names, [2, 1, 3], cpu) is None  # default
    # a checkpoint made with other scales belongs to another stack; without scales, old prints
    from mnistlab.models.stn import StackedSTN
    from mnistlab.train.engine import _shape_of

    slow, plain = StackedPaperNet(True, cpu, 0.1), StackedPaperNet(True, cpu)
    assert _shape_of(slow, names) != _shape_of(plain, names)
    assert _shape_of(StackedSTN(True, cpu), names) == repr(sorted(names))
