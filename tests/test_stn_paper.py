"""The STN paper's distorted MNIST: generators (ranges, determinism, conventions), the paper's
networks stacked, and the study end to end (tiny), resumed after an interruption."""

import pytest
import torch
from torch.nn import functional as F

from mnistlab.data.distort import DISTORTIONS, SIZES, distort
from mnistlab.errors import MnistlabError
from mnistlab.models.paper_stn import StackedPaperNet, init_paper_net
from mnistlab.models.stack import Step, stack_states
from mnistlab.progress import Progress
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


@pytest.mark.parametrize("size,half", [(28, False), (42, False), (42, True)])
@pytest.mark.parametrize("use_stn", [False, True])
def test_stacked_paper_nets_equal_the_solo_nets(size, half, use_stn):
    nets = [init_paper_net(use_stn, size, s, half).eval() for s in range(3)]
    p = stack_states([n.state_dict() for n in nets])
    x = torch.rand(3, 8, 1, size, size)
    out = StackedPaperNet(use_stn, torch.device("cpu"), half=half).forward(p, x, Step(False))
    ref = torch.stack([n(x[i]) for i, n in enumerate(nets)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    if use_stn:  # the localisation network starts at the identity
        torch.testing.assert_close(
            nets[0].theta(x[0]), torch.eye(2, 3).expand(8, 2, 3), atol=0, rtol=0
        )


def test_rts_at_half_resolution_has_the_reproductions_shapes():
    """42×42 seen at 21×21 by the classifier (9×9 → 13, pooled to 7 with every pixel kept;
    7×7 → 1, pooled to 1) and by the localisation network (21 → 17 → 8 → 4 → 2)."""
    half, full = init_paper_net(True, 42, 0, True), init_paper_net(True, 42, 0, False)
    assert half.classifier.fc.in_features == 32 * 1 * 1
    assert full.classifier.fc.in_features == 32 * 5 * 5
    assert half.fc_loc[0].in_features == 20 * 2 * 2 and full.fc_loc[0].in_features == 20 * 7 * 7
    x = torch.rand(4, 1, 42, 42)
    assert half(x).shape == (4, 10) and half.theta(x).shape == (4, 2, 3)
    assert half.transform(x)[0].shape == x.shape  # it samples at full resolution
    assert not stn_paper.half(stn_paper.STNPaperConfig(rts_half=True), "R")


def test_the_search_gives_both_models_the_same_grid():
    cfg = stn_paper.STNPaperConfig(lr_grid=(0.005, 0.01), loc_scales=(1.0, 0.1))
    assert stn_paper.grid(cfg, "cnn") == [(0.005, 1.0), (0.01, 1.0)]
    assert stn_paper.grid(cfg, "st-cnn") == [(0.005, 1.0), (0.005, 0.1), (0.01, 1.0), (0.01, 0.1)]
    (m,) = stn_paper.members(cfg, "R", "st-cnn", [(0, 0.01, 0.1)], torch.arange(4))
    assert m.lr_scales == (("localization.", 0.1), ("fc_loc.", 0.1))


def test_members_of_one_stack_take_their_own_localisation_steps():
    """Per-member scales: a [K, P] column scale, member k's localisation slice × its factor."""
    from mnistlab.train.engine import Member
    from mnistlab.train.trainer import _column_scale

    cpu = torch.device("cpu")
    names = ["classifier.fc.weight", "fc_loc.2.bias", "localization.0.weight"]
    loc = (("localization.", 0.1), ("fc_loc.", 0.1))
    ms = [Member(0, {}, torch.arange(1), 0.01), Member(0, {}, torch.arange(1), 0.01, lr_scales=loc)]
    scale = _column_scale(StackedPaperNet(True, cpu), names, [2, 1, 3], cpu, ms)
    want = torch.tensor([[1.0] * 6, [1.0, 1.0, 0.1, 0.1, 0.1, 0.1]])
    torch.testing.assert_close(scale, want)
    assert _column_scale(StackedPaperNet(True, cpu), names, [2, 1, 3], cpu, ms[:1]) is None


def test_holm_correction_matches_a_hand_computation():
    """p = 0.01, 0.04, 0.03, 0.20 over four tests: sorted 0.01·4 = 0.04, 0.03·3 = 0.09,
    0.04·2 = 0.08 → 0.09 (monotone), 0.20·1 = 0.20 → 0.20; only the first stays under 5 %."""
    from mnistlab.stats import Comparison, holm

    raw = [Comparison(0.01, p, "paired t-test over 3 seeds", 3) for p in (0.01, 0.04, 0.03, 0.2)]
    out = holm(raw)
    assert [round(c.p, 6) for c in out] == [0.04, 0.09, 0.09, 0.2]
    assert [c.significant for c in out] == [True, False, False, False]
    assert "Holm-corrected over 4 tests" in out[0].test
    none = Comparison(0.0, None, "paired t-test over 1 seed", 1)
    assert holm([none, raw[0]])[0] is none and holm([none, raw[0]])[1].p == 0.01


def test_the_search_never_reads_the_test_labels(tmp_path, mnist):
    """Re-run with the test labels shuffled: every choice is the same (the search sees only
    the distorted training images)."""
    cfg = stn_paper.STNPaperConfig(**{**TINY, "distortions": ("R",), "seeds": 1})
    train = stn_paper.distorted("R", "train", cfg.limit_train, cfg.data_seed, None)
    picks = [
        stn_paper.search(cfg, "R", m, train, tmp_path / f"a{m}", torch.device("cpu"), Progress())
        for m in stn_paper.MODELS
    ]
    from unittest import mock

    real = stn_paper.distorted

    def shuffled(kind, split, *a):
        d = real(kind, split, *a)
        if split == "test":
            return type(d)(d.images, d.labels[torch.randperm(len(d.labels))], d.params)
        return d

    with mock.patch.object(stn_paper, "distorted", shuffled):
        again = [
            stn_paper.search(
                cfg, "R", m, stn_paper.distorted("R", "train", cfg.limit_train, 0, None),
                tmp_path / f"b{m}", torch.device("cpu"), Progress(),
            )
            for m in stn_paper.MODELS
        ]  # fmt: skip
    assert [p["chosen"] for p in picks] == [p["chosen"] for p in again]
    assert [p["grid"] for p in picks] == [p["grid"] for p in again]


TINY = dict(
    epochs=2,
    seeds=2,
    limit_train=256,
    limit_test=64,
    device="cpu",
    lr_grid=(0.01, 0.02),
    loc_scales=(1.0, 0.1),
    search_train=150,
    val_size=80,
)


def test_stn_paper_study_runs_and_resumes_to_the_same_numbers(tmp_path, mnist):
    cfg = stn_paper.STNPaperConfig(**TINY)
    ref = stn_paper.run(cfg, tmp_path / "ref")
    assert ref["distortions"] == list(DISTORTIONS)
    for kind in DISTORTIONS:
        for model in stn_paper.MODELS:
            r = ref["results"][kind][model]
            assert len(r["per_seed_test_error"]) == 2 and len(r["test_acc_curve"]) == 2
    per_seed = {"theta_sd_by_seed", "active_units_by_seed", "hidden_units"}
    assert set(ref["theta"]["R"]) == {"mean_scale", "rotation", *per_seed}
    assert set(ref["theta"]["RTS"]) == {"mean_scale", "rotation", "scale", *per_seed}
    assert len(ref["theta"]["E"]["active_units_by_seed"]) == 2
    chosen = ref["results"]["R"]["st-cnn"]["chosen"]
    assert chosen["lr"] in (0.01, 0.02) and chosen["loc_scale"] in (1.0, 0.1)
    assert (tmp_path / "ref" / "search" / "RTS_st-cnn.json").is_file()
    for f in ("paper_examples.png", "paper_learned_vs_drawn.png", "paper_error_curves.png"):
        assert (tmp_path / "ref" / f).is_file()
    with pytest.raises(KeyboardInterrupt):  # in the middle of the cells
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
    from mnistlab.train.optim import StackedOptimizer
    from mnistlab.train.trainer import _column_scale

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
    from mnistlab.train.trainer import shape_of as _shape_of

    slow, plain = StackedPaperNet(True, cpu, 0.1), StackedPaperNet(True, cpu)
    assert _shape_of(slow, names) != _shape_of(plain, names)
    assert _shape_of(StackedSTN(True, cpu), names) == repr(sorted(names))
