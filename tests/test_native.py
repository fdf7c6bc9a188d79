"""The native conv → pool → ReLU kernel: torch's function and gradients, torch's tie and NaN
rules, its build cache, and the torch path whenever it does not apply."""

import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from mnistlab.models import native, stack
from mnistlab.models.stack import Noise, Step, stack_states
from mnistlab.models.stn import StackedSTN, init_stn, to_input

HAVE_CC = native.compiler() is not None  # the compiler the code itself would use ($CC, gcc)
needs_native = pytest.mark.skipif(not HAVE_CC, reason="no C compiler ($CC / gcc) on Linux")
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
    torch.manual_seed(0)
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
    native path and torch's give the same logits and gradients (to rounding). Seeded: the
    two round differently, and on rare inputs a max-pool window or a bilinear cell flips."""
    torch.manual_seed(0)
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
    compiler = native.compiler()
    first = native.build(compiler)
    mtime = first.stat().st_mtime_ns
    assert native.build(compiler) == first and first.stat().st_mtime_ns == mtime
    assert first.parent == tmp_cache / "kernels"
    monkeypatch.setattr(native, "FLAGS", ("-this-flag-does-not-exist",))
    native.library.cache_clear()
    try:
        assert native.library() is None  # compile error → warning, torch's layers
        assert not list((tmp_cache / "kernels").glob(".conv_pool.*"))  # no half-written file
    finally:
        native.library.cache_clear()


# ------------------------------------------------------------------ the operator's contract


def _args(k=2, n=3, cin=1, co=10, ks=5, size=28):
    x, p = _block(cin, co, ks, size, k=k, n=n)
    return x.detach(), p["l.weight"].detach(), p["l.bias"].detach()


def _bad_calls():
    """Each wrong argument of the op, one at a time (all else right)."""
    x, w, b = _args()
    s = torch.ones(2, 3, 10)
    return {
        "4-d images": (x[0], w, b, None),
        "kernel shape not covered": (x, torch.zeros(2, 6, 1, 5, 5), torch.zeros(2, 6), None),
        "K mismatch": (x[:1], w, b, None),
        "float64": (x.double(), w.double(), b.double(), None),
        "float64 bias": (x, w, b.double(), None),
        "non-contiguous images": (x.transpose(3, 4), w, b, None),
        "non-contiguous kernels": (x, w.transpose(3, 4), b, None),
        "wrong bias shape": (x, w, b[:, :5], None),
        "wrong scale shape": (x, w, b, s[:, :2]),
        "wrong scale dtype": (x, w, b, s.to(torch.float16)),
        "too large": (torch.zeros(2, 3, 1, 40, 40), w, b, None),
    }


@needs_native
@pytest.mark.parametrize("name", list(_bad_calls()))
def test_every_wrong_argument_is_an_exception_never_a_crash(name):
    args = _bad_calls()[name]
    with pytest.raises(ValueError, match="conv_pool_relu: "):
        torch.ops.mnistlab.conv_pool_relu(*args)


@needs_native
def test_a_tensor_off_the_cpu_is_refused_and_meta_tensors_get_shapes():
    """The op's checks refuse another device (on a GPU machine ``tests/test_cuda.py`` sends a
    CUDA tensor through the op itself); meta tensors take the fake implementation."""
    x, w, b = _args()
    with pytest.raises(ValueError, match="is on meta"):
        native.check(x.to("meta"), w, b)
    out, code = torch.ops.mnistlab.conv_pool_relu(x.to("meta"), w.to("meta"), b.to("meta"), None)
    assert out.shape == (2, 3, 10, 12, 12) and code.dtype == torch.uint8


@needs_native
def test_the_backward_op_checks_its_arguments_too():
    x, w, b = _args()
    out, code = torch.ops.mnistlab.conv_pool_relu(x, w, b, None)
    ok = (x, w, None, code, torch.ones_like(out), True)
    torch.ops.mnistlab.conv_pool_relu_backward(*ok)
    with pytest.raises(ValueError, match=r"code must be torch\.uint8"):
        torch.ops.mnistlab.conv_pool_relu_backward(x, w, None, code.float(), out, True)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.mnistlab.conv_pool_relu_backward(x, w, None, code, out[:, :1], True)


def _random_shapes(count=12, seed=0):
    """Shapes drawn inside the kernel's range: K, batch, channels, kernel and image size."""
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    out = []
    while len(out) < count:
        ks = pick([5, 7])
        size = pick(list(range(ks + 1, 29)))
        ho = size - ks + 1
        block = native.BLOCKS.get((ks, 3 if ho > 8 else 1))
        if block is None or not 2 <= ho <= 24:
            continue
        cin = 1 if ks == 7 else pick([1, 4, 5, 8, 10, 12, 15, 16])
        co = block * pick(list(range(1, native.MAX_CO // block + 1)))
        out.append((pick([1, 2, 3, 5]), pick([1, 2, 5]), cin, co, ks, size))
    return out


@needs_native
@pytest.mark.parametrize("k,n,cin,co,ks,size", _random_shapes())
def test_random_shapes_in_range_equal_torch(k, n, cin, co, ks, size):
    x, p = _block(cin, co, ks, size, seed=k * 100 + size, k=k, n=n)
    assert native.applies(x, p["l.weight"])
    scale = 2.0 * (torch.rand(k, n, co, generator=torch.Generator().manual_seed(3)) > 0.5)
    out = native.conv_pool_relu(x, p["l.weight"], p["l.bias"], scale)
    ref = _torch(x, p, scale)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    for mine, want in zip(_grads(out, x, p, g), _grads(ref, x, p, g), strict=True):
        torch.testing.assert_close(mine, want, atol=1e-4, rtol=1e-4)


@needs_native
def test_opcheck_passes_on_the_operator():
    """Schema, fake (meta) implementation and autograd registration, as torch checks them."""
    x, w, b = _args(k=1, n=2)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    scale = torch.ones(1, 2, 10)
    for args in ((x, w, b, None), (x, w, b, scale)):
        torch.library.opcheck(torch.ops.mnistlab.conv_pool_relu.default, args)


SANITIZED = """
import sys, torch
sys.path.insert(0, {tests!r})
from mnistlab.models import native
lib = native.load(native.build({cc!r}, {flags!r}, __import__('pathlib').Path({folder!r})))
native.library = lambda: lib
import test_native as t
for shape in t._random_shapes(6, seed=1):
    t.test_random_shapes_in_range_equal_torch(*shape)
for cin, co, ks, size in t.BLOCKS:
    t.test_native_block_equals_torch_forward_and_gradients(cin, co, ks, size, True)
print("sanitized: clean")
"""


@needs_native
def test_the_kernel_is_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """Built with -fsanitize=address,undefined and run on the comparisons in a subprocess (the
    sanitizer runtime preloaded, leaks not checked: Python itself is not instrumented)."""
    cc = native.compiler()
    runtime = [
        subprocess.run([cc, f"-print-file-name={lib}"], capture_output=True, text=True).stdout
        for lib in ("libasan.so", "libstdc++.so")  # C++ exceptions (torch's imports) need both
    ]
    if not all("/" in r for r in runtime):
        pytest.skip(f"{cc} has no AddressSanitizer runtime")
    flags = (
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
        "-fno-sanitize-recover=all",
        "-march=native",
        "-std=gnu11",
        "-shared",
        "-fPIC",
    )
    code = SANITIZED.format(
        tests=os.path.dirname(__file__), cc=cc, flags=flags, folder=str(tmp_path)
    )
    env = {
        **os.environ,
        "LD_PRELOAD": " ".join(r.strip() for r in runtime),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0 and "sanitized: clean" in res.stdout, res.stderr[-3000:]


class _Messages:
    """A progress that keeps its messages (and draws nothing)."""

    def __init__(self):
        from mnistlab.progress import Progress

        self.messages, self._p = [], Progress()

    def task(self, description, total):
        return self._p.task(description, total)

    def message(self, text):
        self.messages.append(text)


def test_a_resume_across_a_numeric_path_change_starts_over(tmp_path, monkeypatch):
    """A checkpoint remembers which conv-pool path trained it; resumed under the other one
    (MNISTLAB_NATIVE=0, a node without a compiler) it says so in one line and starts over."""
    from mnistlab.models.stn import STNNet
    from mnistlab.train.engine import Member, Pool, Schedule, train_stack

    g = torch.Generator().manual_seed(0)
    pool = Pool(
        torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (64,), generator=g),
    )
    members = [Member(s, init_stn(True, s).state_dict(), torch.arange(64), 0.01) for s in (0, 1)]
    trainable = {n for n, _ in STNNet(True).named_parameters()}

    def train(progress):
        return train_stack(
            StackedSTN(True, torch.device("cpu")),
            members,
            pool,
            Schedule(epochs=1, batch_size=32, optimizer="sgd"),
            trainable=trainable,
            device=torch.device("cpu"),
            prepare=to_input,
            checkpoint=tmp_path / "ck.pt",
            progress=progress,
        )

    first = train(_Messages())
    same = _Messages()
    train(same)
    assert any("resumed after epoch 1" in m for m in same.messages)
    here = native.path(torch.device("cpu"))
    other = "torch" if here == "native" else "native"
    monkeypatch.setattr(native, "path", lambda device: other)
    moved = _Messages()
    again = train(moved)
    (line,) = [m for m in moved.messages if "conv-pool path" in m]
    assert f"trained on the {here} conv-pool path and this process runs the {other}" in line
    assert "training this stack from the start" in line
    assert not any("resumed" in m for m in moved.messages)
    assert len(again.history) == len(first.history)
