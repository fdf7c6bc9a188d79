"""Every private API the tool uses has a public fallback that gives the same numbers."""

import pickle

import numpy as np
import pytest
import torch

from mnistlab import compat


def _adam_state(seed=0, k=3, p=257):
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(p, generator=g) for _ in range(k)]
        for _ in range(4)  # params, grads, m, v
    ]


@pytest.mark.parametrize("decay", [0.0, 1e-3])
def test_adam_fallback_gives_the_fused_kernels_numbers(decay):
    """Both paths over 20 steps; the fused kernel (where present) and the public operations
    agree to float32 rounding."""
    assert compat.fused_adam() is not None  # this torch has it; the fallback is for others
    runs = {}
    for fused in (True, False):
        params, grads, m, v = _adam_state()
        v = [x.abs() for x in v]
        steps = [torch.zeros(()) for _ in params]
        for i in range(20):
            for s in steps:
                s += 1
            g = [x * (1 + 0.1 * i) for x in grads]
            compat.adam_step(
                params, g, m, v, steps, lr=1e-2, beta1=0.9, beta2=0.999,
                weight_decay=decay, eps=1e-8, fused=fused,
            )  # fmt: skip
        runs[fused] = params
    for a, b in zip(runs[True], runs[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adam_fallback_equals_torch_optim_adam():
    params, grads, m, v = _adam_state(k=1)
    ref = params[0].clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=1e-2, weight_decay=1e-3, foreach=False, fused=False)
    m, v, steps = [torch.zeros_like(params[0])], [torch.zeros_like(params[0])], [torch.zeros(())]
    for _ in range(10):
        ref.grad = grads[0].clone()
        opt.step()
        steps[0] += 1
        compat.adam_step(
            params, grads, m, v, steps, lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=1e-3,
            eps=1e-8, fused=False,
        )  # fmt: skip
    torch.testing.assert_close(params[0], ref.detach(), rtol=1e-6, atol=1e-7)


def test_convolution_gradients_fallback_gives_the_same_numbers():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 12, 12, generator=g)
    kernel = torch.randn(9, 2, 5, 5, generator=g)  # 3 groups of 2 → 3 channels each
    grad = torch.randn(4, 9, 8, 8, generator=g)
    private = compat.conv_weight_bias_grads(grad, x, kernel, 3, (True, True))
    public = compat.conv_weight_bias_grads(grad, x, kernel, 3, (True, True), private=False)
    for a, b in zip(private, public, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (
        compat.conv_weight_bias_grads(grad, x, kernel, 3, (False, True), private=False)[0] is None
    )


def test_the_numpy_reconstructor_rebuilds_a_pickled_array():
    from mnistlab.data.safepickle import safe_loads

    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert compat.numpy_reconstruct() is not None
    np.testing.assert_array_equal(safe_loads(pickle.dumps(a, protocol=4)), a)


def test_heartbeat_is_none_without_the_storage_methods():
    class Bare:
        pass

    assert compat.heartbeat(Bare(), "s", 0) is None
    beats = []

    class Storage:
        def get_study_id_from_name(self, name):
            return 7

        def get_trial_id_from_study_id_trial_number(self, study, number):
            return study * 100 + number

        def record_heartbeat(self, trial):
            beats.append(trial)

    compat.heartbeat(Storage(), "s", 3)()
    assert beats == [703]
