"""Engine paths the STN and the best protocols take: SGD with momentum and the cosine schedule
against torch.optim written by hand, and the per-member augmentation streams."""

import math

import pytest
import torch

from mnistlab.train.augment import Augment, augment_batch
from mnistlab.train.engine import Schedule

from .test_engine import TOL, _close, _head, _heads, adam, by_hand


def _sgd(head, m):
    return torch.optim.SGD(
        [{"params": [head.weight], "weight_decay": m.weight_decay}, {"params": [head.bias]}],
        lr=m.lr,
        momentum=0.9,
    )


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_sgd_with_momentum_equals_torch_optim_sgd(schedule):
    """The STN's optimiser path: per-member lr and L2, momentum 0.9, ragged training sets."""
    members = [_head(0, 0.05, 100, 1e-3), _head(1, 0.02, 90), _head(2, 0.1, 137, 1e-4)]
    sched = Schedule(epochs=4, batch_size=32, optimizer="sgd", momentum=0.9, lr_schedule=schedule)
    stacked = _heads(members, sched)
    for k, m in enumerate(members):
        assert _close(stacked.states[k], by_hand(m, sched, _sgd))


def test_cosine_schedule_equals_torch_optim_adam_with_the_same_lr_per_epoch():
    members = [_head(0, 1e-2, 100, 1e-3), _head(1, 3e-3, 90)]
    sched = Schedule(epochs=5, batch_size=32, lr_schedule="cosine")
    stacked = _heads(members, sched)
    for k, m in enumerate(members):
        assert _close(stacked.states[k], by_hand(m, sched, adam))
    constant = _heads(members, Schedule(epochs=5, batch_size=32))
    assert not _close(stacked.states[0], constant.states[0], tol=TOL)  # the schedule acts


def test_cosine_factor_anneals_from_one_towards_zero_over_its_horizon():
    s = Schedule(epochs=10, batch_size=1, lr_schedule="cosine")
    assert s.lr_factor(1) == 1.0
    assert s.lr_factor(6) == pytest.approx(0.5)
    assert s.lr_factor(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    longer = Schedule(epochs=10, batch_size=1, lr_schedule="cosine", horizon=20)
    assert longer.lr_factor(11) == pytest.approx(0.5)
    assert Schedule(epochs=10, batch_size=1).lr_factor(7) == 1.0


def _batch(k=3, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(k, b, 28, 28, dtype=torch.uint8)
    x[..., 8:20, 11:17] = torch.randint(100, 255, (k, b, 12, 6), generator=g, dtype=torch.uint8)
    return x


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_augmentation_touches_only_real_rows_of_augmented_members():
    x = _batch()
    specs = [Augment(shift=2.0, rotate=10.0), None, Augment()]
    out = augment_batch(x, specs, _gens(0, 1, 2), rows=[5, 8, 8])
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out[0, 5:], x[0, 5:])  # padding rows
    assert torch.equal(out[1], x[1]) and torch.equal(out[2], x[2])  # none, or zero magnitudes
    assert all(not torch.equal(out[0, i], x[0, i]) for i in range(5))


def test_augmentation_stream_depends_only_on_the_members_own_generator():
    x = _batch()
    spec = Augment(shift=2.0, rotate=10.0, scale=0.1)
    alone = augment_batch(x[:1], [spec], _gens(7), rows=[8])
    mates = augment_batch(x, [spec, spec, None], _gens(7, 8, 9), rows=[8, 3, 8])
    again = augment_batch(x, [spec, spec, None], _gens(7, 99, 9), rows=[8, 8, 8])
    assert torch.equal(alone[0], mates[0]) and torch.equal(alone[0], again[0])
    other = augment_batch(x[:1], [spec], _gens(8), rows=[8])
    assert not torch.equal(alone[0], other[0])


def test_a_pure_shift_moves_the_digit_by_at_most_its_magnitude():
    x = _batch(k=1, b=64)
    out = augment_batch(x, [Augment(shift=2.0)], _gens(3), rows=[64])

    def centre(img):
        w = img.float()
        cols = torch.arange(28.0)
        return (w.sum(0) @ cols) / w.sum(), (w.sum(1) @ cols) / w.sum()

    for a, b in zip(x[0], out[0], strict=True):
        (ax, ay), (bx, by) = centre(a), centre(b)
        assert abs(float(bx - ax)) <= 2.05 and abs(float(by - ay)) <= 2.05


@pytest.mark.parametrize("spec", [Augment(elastic=34.0), Augment(shift=2.0, elastic=34.0)])
def test_elastic_stream_is_the_members_own_and_touches_only_its_real_rows(spec):
    x = _batch()
    alone = augment_batch(x[:1], [spec], _gens(7), rows=[8])
    mates = augment_batch(x, [spec, Augment(elastic=34.0), None], _gens(7, 8, 9), rows=[8, 3, 8])
    assert torch.equal(alone[0], mates[0])
    assert torch.equal(mates[1, 3:], x[1, 3:]) and torch.equal(mates[2], x[2])
    assert all(not torch.equal(alone[0, i], x[0, i]) for i in range(8))
    affine_only = augment_batch(x[:1], [Augment(shift=spec.shift)], _gens(7), rows=[8])
    assert not torch.equal(alone[0], affine_only[0])


def test_elastic_field_is_smooth_and_of_simards_size():
    """Displacements of about α·0.04 px (uniform noise blurred by a σ = 4 Gaussian), varying
    slowly between neighbouring pixels, and none without α."""
    from mnistlab.train.augment import _elastic_field

    field = _elastic_field(Augment(elastic=34.0), 256, 28, 28, _gens(0)[0]) * 14  # → px
    assert 1.0 < float(field.std()) < 2.5
    step = (field[:, 1:] - field[:, :-1]).abs().mean()
    assert float(step) < 0.2 * float(field.abs().mean())
    assert not Augment(elastic=0.0).active and Augment(elastic=1.0).active
    assert "elastic α 34 px" in Augment(elastic=34.0).label()


@pytest.mark.parametrize(
    ("size", "sigma", "shape"), [(25, 4.0, (3, 2, 28, 28)), (7, 1.5, (5, 9, 13))]
)
def test_the_matrix_blur_is_torchvisions_gaussian_blur(size, sigma, shape):
    from torchvision.transforms.v2.functional import gaussian_blur

    from mnistlab.train.augment import separable_blur

    x = torch.rand(shape, generator=_gens(1)[0])
    expect = gaussian_blur(x, [size, size], [sigma, sigma])
    assert torch.allclose(separable_blur(x, size, sigma), expect, atol=1e-5)


def test_elementwise_affine_grid_equals_torchs_in_values_and_gradient():
    from torch.nn import functional as F

    from mnistlab.models.grid import affine_grid

    theta = (
        torch.randn(64, 2, 3, generator=torch.Generator().manual_seed(0)) * 0.6
    ).requires_grad_()
    for h, w in ((28, 28), (42, 30)):
        ours = affine_grid(theta, h, w)
        ref = F.affine_grid(theta, [64, 1, h, w], align_corners=False)
        assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6, rtol=0)
        weights = torch.randn_like(ref)
        (g_ours,) = torch.autograd.grad((ours * weights).sum(), theta)
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), theta)
        assert torch.allclose(g_ours, g_ref, atol=1e-4, rtol=1e-5)
