"""The native conv → pool → ReLU kernel: torch's function and gradients, torch's tie and NaN
rules, its build cache, and the torch path whenever it does not apply."""

import shutil

import pytest
import torch
from torch.nn import functional as F

from mnistlab.models import native, stack
from mnistlab.models.stack import Noise, Step, stack_states
from mnistlab.models.stn import StackedSTN, init_stn, to_input

HAVE_CC = shutil.which("gcc") is not None
needs_native = pytest.mark.skipif(not HAVE_CC, reason="no gcc")
CL = torch.channels_last
# (input channels, output channels, kernel, size): the STN's four blocks
BLOCKS = [(1, 8, 7, 28), (8, 10, 5, 11), (1, 10, 5, 28), (10, 20, 5, 12)]


def test_a_machine_with_a_compiler_builds_the_kernel():
    """So that the comparisons below cannot pass by silently running torch against torch."""
    if HAVE_CC:
        assert native.library() is not None
        assert native.describe().startswith("native")


def _torch(x, p, scale=None):
    """The same block through torch's grouped layers (the path used where native does not)."""
    k, n = x.shape[:2]
    g = stack.conv2d(stack.to_groups(x, CL), p, "l", CL)
    if scale is not None:
        g = g * scale.transpose(0, 1).reshape(n, -1, 1, 1)
    return stack.pool_relu(g).unflatten(1, (k, -1)).transpose(0, 1)


def _block(cin, co, ks, size, seed=0, k=3, n=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, n, cin, size, size, generator=g).requires_grad_()
    p = {
        "l.weight": (0.3 * torch.randn(k, co, cin, ks, ks, generator=g)).requires_grad_(),
        "l.bias": (0.1 * torch.randn(k, co, generator=g)).requires_grad_(),
    }
    return x, p


def _grads(out, x, p, g):
    return torch.autograd.grad(out, [x, p["l.weight"], p["l.bias"]], g)


@needs_native
@pytest.mark.parametrize("cin,co,ks,size", BLOCKS)
@pytest.mark.parametrize("dropout", [False, True])
def test_native_block_equals_torch_forward_and_gradients(cin, co, ks, size, dropout):
    x, p = _block(cin, co, ks, size)
    scale = None
    if dropout:  # Dropout2d's mask: whole channels zeroed, the rest scaled by 2
        scale = 2.0 * (torch.rand(3, 6, co, generator=torch.Generator().manual_seed(1)) > 0.5)
    assert native.applies(x, p["l.weight"])
    out = native.conv_pool_relu(x, p["l.weight"], p["l.bias"], scale)
    ref = _torch(x, p, scale)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    for mine, want in zip(_grads(out, x, p, g), _grads(ref, x, p, g), strict=True):
        torch.testing.assert_close(mine, want, atol=1e-4, rtol=1e-4)


@needs_native
def test_ties_and_nan_follow_torch():
    """A window of equal values routes its gradient to the first; a NaN wins its window and
    passes through ReLU; an all-negative window is 0 with no gradient — all as torch does."""
    x, p = _block(1, 10, 5, 28, k=1, n=2)
    with torch.no_grad():
        p["l.weight"].zero_()  # every conv output equals the bias: ties everywhere
        p["l.bias"].copy_(torch.linspace(-0.5, 0.5, 10))
    out = native.conv_pool_relu(x, p["l.weight"], p["l.bias"])
    ref = _torch(x, p)
    assert torch.equal(out, ref)
    g = torch.randn(out.shape)
    for mine, want in zip(_grads(out, x, p, g), _grads(ref, x, p, g), strict=True):
        torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-5)
    bad = x.detach().clone()
    bad[0, 0, 0, 3, 3] = float("nan")
    w = torch.randn(1, 10, 1, 5, 5)
    mine = native.conv_pool_relu(bad, w, p["l.bias"].detach())
    want = _torch(bad, {"l.weight": w, "l.bias": p["l.bias"].detach()})
    assert torch.equal(mine.isnan(), want.isnan()) and mine.isnan().any()
    torch.testing.assert_close(mine.nan_to_num(), want.nan_to_num(), atol=1e-5, rtol=1e-5)


@needs_native
def test_stacked_stn_in_training_mode_equals_the_torch_path(monkeypatch):
    """The whole stacked STN with Dropout2d and dropout drawn from per-member generators: the
    native path and torch's give the same logits and gradients (to rounding)."""
    models = [init_stn(True, s) for s in range(3)]
    for m in models:
        torch.nn.init.normal_(m.fc_loc[2].weight, std=0.05)
    state = stack_states([m.state_dict() for m in models])
    x = to_input(torch.randint(0, 256, (3, 8, 28, 28), dtype=torch.uint8))
    y = torch.randint(0, 10, (3, 8))

    def run():
        p = {k: v.clone().requires_grad_() for k, v in state.items()}
        gens = [torch.Generator().manual_seed(s) for s in range(3)]
        noise = Noise(gens, [8, 8, 8], 8, [0.5] * 3, torch.device("cpu"))
        out = StackedSTN(True, torch.device("cpu")).forward(p, x, Step(True, noise))
        return out, torch.autograd.grad(
            F.cross_entropy(out.flatten(0, 1), y.flatten()), [*p.values()]
        )

    out, grads = run()
    monkeypatch.setattr(native, "applies", lambda *a: False)
    ref, ref_grads = run()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shapes_it_was_not_written_for_take_torchs_path():
    x = torch.zeros(2, 4, 1, 28, 28)
    assert not native.applies(x, torch.zeros(2, 6, 1, 5, 5))  # 6 channels: no register block
    assert not native.applies(x, torch.zeros(2, 10, 1, 9, 9))  # 9×9 kernels
    assert not native.applies(torch.zeros(2, 4, 1, 42, 42), torch.zeros(2, 10, 1, 5, 5))
    assert not native.applies(x.double(), torch.zeros(2, 10, 1, 5, 5).double())
    assert not native.applies(torch.zeros(2, 4, 3, 12, 12), torch.zeros(2, 20, 3, 5, 5))


def test_without_a_compiler_every_block_runs_through_torch(monkeypatch):
    monkeypatch.setenv("MNISTLAB_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None and native.describe() == "torch"
        x, p = _block(1, 10, 5, 28)
        assert not native.applies(x, p["l.weight"])
        out = stack.conv_pool_relu(x, p, "l", CL)
        assert out.shape == (3, 6, 10, 12, 12)
    finally:
        native.library.cache_clear()


@needs_native
def test_the_build_is_cached_per_source_and_a_failed_build_falls_back(tmp_cache, monkeypatch):
    compiler = native._compiler()
    first = native._build(compiler)
    mtime = first.stat().st_mtime_ns
    assert native._build(compiler) == first and first.stat().st_mtime_ns == mtime
    assert first.parent == tmp_cache / "kernels"
    monkeypatch.setattr(native, "FLAGS", ("-this-flag-does-not-exist",))
    native.library.cache_clear()
    try:
        assert native.library() is None  # compile error → warning, torch's layers
        assert not list((tmp_cache / "kernels").glob(".conv_pool.*"))  # no half-written file
    finally:
        native.library.cache_clear()
