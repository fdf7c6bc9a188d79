"""The training engine: stacked members equal solo training, exact resume, determinism."""

import pytest
import torch
from torch.nn import functional as F

from mnistlab.models.backbones import new_linear
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp
from mnistlab.models.stack import StackedLinear, Step, stack_states
from mnistlab.models.stn import StackedSTN, init_stn, to_input
from mnistlab.train.engine import Member, Pool, Schedule, train_stack
from mnistlab.train.trainer import _derive

CPU = torch.device("cpu")
# Float tolerance of "the same training": a stack runs batched matmuls whose summation order
# can differ from a single member's in the last bit (measured ≤ 3e-7 on the heads below).
TOL = 1e-5


def _data(n=400, d=32, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=g)
    return Pool(centres[y] + 0.8 * torch.randn(n, d, generator=g), y)


def _head(seed, lr, n, wd=0.0, d=32):
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(seed))[:n]
    return Member(
        seed=seed,
        state=new_linear(d, 5, seed).state_dict(),
        train=idx,
        lr=lr,
        weight_decay=wd,
        evals={"val": torch.arange(300, 340) + seed},
        meta={"seed": seed, "lr": lr},
    )


def _heads(members, schedule, **kw):
    return train_stack(
        StackedLinear(),
        members,
        _data(),
        schedule,
        trainable={"weight", "bias"},
        device=CPU,
        shared_evals={"test": torch.arange(350, 400)},
        **kw,
    )


def _close(a, b, tol=TOL):
    return all(torch.allclose(a[k], b[k], atol=tol, rtol=0) for k in a)


@pytest.mark.parametrize("use_stn", [True, False])
@pytest.mark.parametrize("path", ["torch", "native"])
def test_stacked_stn_matches_solo_logits_and_gradients(use_stn, path, monkeypatch):
    """Equal to rounding, gradients relative to their largest element. On torch's path the
    stack and the solo models do the same arithmetic grouped differently; the native kernel
    rounds otherwise, and a max-pool or a bilinear cell can then flip on some inputs (a
    non-smooth function, not a wrong gradient: test_native compares the kernel itself), so
    the data are seeded."""
    from mnistlab.models import native

    if path == "torch":
        monkeypatch.setattr(native, "applies", lambda x, w: False)
    torch.manual_seed(0)
    models = [init_stn(use_stn, s) for s in range(3)]
    if use_stn:  # a non-identity θ, so the sampling path is exercised
        for m in models:
            torch.nn.init.normal_(m.fc_loc[2].weight, std=0.05)
    p = {
        k: v.clone().requires_grad_()
        for k, v in stack_states([m.state_dict() for m in models]).items()
    }
    x = torch.randint(0, 256, (3, 8, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (3, 8))
    out = StackedSTN(use_stn, CPU).forward(p, to_input(x), Step(False))
    grads = torch.autograd.grad(
        sum(F.cross_entropy(out[k], y[k]) for k in range(3)), list(p.values())
    )
    for k, model in enumerate(models):
        model.eval()
        ref = model(to_input(x[k]))
        torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)
        F.cross_entropy(ref, y[k]).backward()
        for name, g in zip(p, grads, strict=True):
            want = dict(model.named_parameters())[name].grad
            scale = max(1.0, want.abs().max().item())
            torch.testing.assert_close(g[k], want, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("bn", [False, True])
def test_stacked_mlp_matches_solo_in_train_and_eval_mode(bn):
    cfg = MLPConfig(batch_norm=bn)
    models = [build_mlp(cfg, s) for s in range(3)]
    p = stack_states([m.state_dict() for m in models])
    x = torch.rand(3, 16, 784)
    train_out = StackedMLP(cfg).forward(p, x, Step(True))
    eval_out = StackedMLP(cfg).forward(p, x, Step(False))
    for k, m in enumerate(models):
        torch.testing.assert_close(train_out[k], m.train()(x[k]), atol=1e-5, rtol=0)
        torch.testing.assert_close(eval_out[k], m.eval()(x[k]), atol=1e-5, rtol=0)
        if bn:  # running statistics moved exactly as the solo module's did
            torch.testing.assert_close(
                p["hidden.0.1.running_mean"][k], m.state_dict()["hidden.0.1.running_mean"]
            )


@pytest.mark.parametrize("bn", [False, True])
def test_frozen_blocks_inside_the_stack_run_as_reused_runs_them(bn):
    """``frozen=n``: each member's own bottom blocks, in evaluation mode (running statistics,
    no dropout) while the top trains — the same training as those blocks run outside as a
    frozen trunk (``first=n``), for a source with batch norm and dropout."""
    from mnistlab.studies.digits.transfer import Reused, frozen_trunk

    source = build_mlp(MLPConfig(batch_norm=bn, dropout=0.3), seed=4)
    pool = _images()
    model = Reused(source, 3, 5, seed=1)
    model.unfreeze(1)
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    shape = MLPConfig(hidden=(100,) * 3, batch_norm=bn)

    def member():
        return Member(
            seed=2,
            state=model.state_dict(),
            train=torch.arange(300),
            lr=1e-2,
            dropout=0.3,
            evals={"val": torch.arange(300, 400)},
        )

    def run(arch, prepare):
        return train_stack(
            arch,
            [member()],
            pool,
            Schedule(epochs=2, batch_size=50),
            trainable=trainable,
            device=CPU,
            prepare=prepare,
        )

    inside = run(StackedMLP(shape, "stack", 0, frozen=2), lambda x: x.flatten(-2).float() / 255)
    outside = run(StackedMLP(shape, "stack", 2), frozen_trunk(source, 2, CPU))
    assert _close(inside.states[0], outside.states[0])
    for a, b in zip(inside.rows(0), outside.rows(0), strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < TOL
    frozen = {k for k in model.state_dict() if k.startswith(("stack.0.", "stack.1."))}
    assert all(torch.equal(inside.states[0][k], model.state_dict()[k]) for k in frozen)


def by_hand(m, sched: Schedule, make_opt):
    """Member ``m`` trained alone with torch.optim in the engine's batch order, its lr set from
    the schedule at the start of each epoch: the reference the stack must equal."""
    pool = _data()
    head = new_linear(32, 5, m.seed)
    opt = make_opt(head, m)
    order = torch.Generator().manual_seed(_derive(m.seed, "order"))
    for epoch in range(1, sched.epochs + 1):
        for group in opt.param_groups:
            group["lr"] = m.lr * sched.lr_factor(epoch)
        perm = torch.randperm(len(m.train), generator=order)
        for lo in range(0, len(m.train), sched.batch_size):
            idx = m.train[perm[lo : lo + sched.batch_size]]
            opt.zero_grad()
            F.cross_entropy(head(pool.x[idx]), pool.y[idx]).backward()
            opt.step()
    return head.state_dict()


def adam(head, m):
    return torch.optim.Adam(
        [{"params": [head.weight], "weight_decay": m.weight_decay}, {"params": [head.bias]}],
        lr=m.lr,
    )


def test_each_member_trains_as_it_would_alone_and_as_torch_optim():
    """Ragged training sets (100/90/137), per-member lr and L2: stacked = alone = torch.optim."""
    members = [_head(0, 1e-2, 100, 1e-3), _head(1, 3e-3, 90), _head(2, 1e-3, 137, 1e-4)]
    sched = Schedule(epochs=4, batch_size=32)
    stacked = _heads(members, sched)
    for k, m in enumerate(members):
        alone = _heads([m], sched)
        for a, b in zip(stacked.rows(k), alone.rows(0), strict=True):
            assert abs(a["val_loss"] - b["val_loss"]) < TOL and a["test_acc"] == b["test_acc"]
        assert _close(stacked.states[k], alone.states[0])
        assert _close(stacked.states[k], by_hand(m, sched, adam))


def test_grouped_members_equal_ungrouped():
    """Members sharing their batches (same seed, other lr) take their inputs once."""

    class Plain(StackedLinear):
        groupable = False

    members = [_head(s, lr, 120) for s in (0, 1) for lr in (1e-3, 1e-2, 3e-2)]
    sched = Schedule(epochs=3, batch_size=32)
    grouped = _heads(members, sched)
    plain = train_stack(
        Plain(),
        members,
        _data(),
        sched,
        trainable={"weight", "bias"},
        device=CPU,
        shared_evals={"test": torch.arange(350, 400)},
    )
    for a, b in zip(grouped.states, plain.states, strict=True):
        assert _close(a, b)


def _mlp_members(seeds, dropout=None):
    pool = _data(n=600, d=784, classes=5, seed=3)
    pool = Pool(pool.x.sigmoid(), pool.y)
    cfg = MLPConfig()
    return pool, [
        Member(
            seed=s,
            state=build_mlp(cfg, s).state_dict(),
            train=torch.arange(400),
            lr=1e-3,
            dropout=dropout,
            evals={"val": torch.arange(400, 500)},
            meta={"seed": s},
        )
        for s in seeds
    ]


def _mlp(pool, members, sched, **kw):
    return train_stack(
        StackedMLP(MLPConfig()),
        members,
        pool,
        sched,
        trainable={n for n, _ in MLP(MLPConfig()).named_parameters()},
        device=CPU,
        **kw,
    )


def test_dropout_member_is_deterministic_and_independent_of_its_neighbours():
    sched = Schedule(epochs=3, batch_size=50)
    pool, ms = _mlp_members([0, 1, 2], dropout=0.3)
    a = _mlp(pool, [ms[0], ms[1]], sched)
    b = _mlp(pool, [ms[0], ms[2]], sched)  # other neighbour
    c = _mlp(pool, [ms[0], ms[1]], sched)  # the same stack again
    alone = _mlp(pool, [ms[0]], sched)
    assert [r["val_loss"] for r in a.rows(0)] == [r["val_loss"] for r in c.rows(0)]
    assert _close(a.states[0], b.states[0]) and _close(a.states[0], alone.states[0])
    assert not _close(a.states[0], a.states[1], tol=1e-3)  # members really differ


def test_dropout_stack_is_within_seed_noise_of_solo_torch_training():
    """Same task, stacked engine vs plain nn.Module + nn.Dropout + torch.optim (other random
    streams): the mean validation accuracy over 4 seeds agrees within the seeds' spread."""
    sched = Schedule(epochs=4, batch_size=50)
    pool, ms = _mlp_members(range(4), dropout=0.3)
    stacked = [r[-1]["val_acc"] for r in (_mlp(pool, ms, sched).rows(k) for k in range(4))]
    solo = []
    for m in ms:
        torch.manual_seed(m.seed)
        model = build_mlp(MLPConfig(dropout=0.3), m.seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(sched.epochs):
            model.train()
            for idx in torch.randperm(400).split(50):
                opt.zero_grad()
                F.cross_entropy(model(pool.x[idx]), pool.y[idx]).backward()
                opt.step()
        model.eval()
        solo.append(float((model(pool.x[400:500]).argmax(1) == pool.y[400:500]).float().mean()))
    spread = max(torch.tensor(stacked).std(), torch.tensor(solo).std(), torch.tensor(0.01))
    assert abs(sum(stacked) / 4 - sum(solo) / 4) < 3 * float(spread)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("dropout", [None, 0.3])
def test_resume_after_interruption_is_bit_identical(tmp_path, dropout):
    sched = Schedule(epochs=5, batch_size=50, patience=2, restore_best=True, checkpoint_every=1)
    pool, ms = _mlp_members([0, 1], dropout=dropout)
    ref = _mlp(pool, ms, sched, checkpoint=tmp_path / "ref.pt")

    def interrupt(info):
        if info.epoch == 3:
            raise _Stop

    with pytest.raises(_Stop):
        _mlp(pool, ms, sched, checkpoint=tmp_path / "run.pt", on_epoch=interrupt)
    resumed = _mlp(pool, ms, sched, checkpoint=tmp_path / "run.pt")

    def numbers(history):  # everything but the wall-clock column
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert numbers(resumed.history) == numbers(ref.history)
    for a, b in zip(resumed.states, ref.states, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_or_foreign_checkpoint_is_not_resumed_from(tmp_path):
    sched = Schedule(epochs=2, batch_size=50, checkpoint_every=1)
    pool, ms = _mlp_members([0])
    ref = _mlp(pool, ms, sched)
    ck = tmp_path / "c.pt"
    _mlp(pool, ms, sched, checkpoint=ck)
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    ck.write_bytes(bytes(raw))
    messages = []

    class Log:
        def message(self, text):
            messages.append(text)

        def task(self, *a):
            from mnistlab.progress import Task

            return Task()

    again = _mlp(pool, ms, sched, checkpoint=ck, progress=Log())
    assert any("corrupt" in m for m in messages)
    assert all(torch.equal(again.states[0][k], ref.states[0][k]) for k in ref.states[0])
    _, other = _mlp_members([5])  # a checkpoint of another stack is refused, not resumed
    _mlp(pool, other, sched, checkpoint=ck)
    messages.clear()
    _mlp(pool, ms, sched, checkpoint=ck, progress=Log())
    assert any("another stack or format" in m for m in messages)


def test_inactive_members_sit_steps_out():
    """A member whose training set ended takes no step: its Adam count stays behind."""
    members = [_head(0, 1e-2, 40), _head(1, 1e-2, 100)]
    res = _heads(members, Schedule(epochs=1, batch_size=32))
    alone = _heads([members[0]], Schedule(epochs=1, batch_size=32))
    assert _close(res.states[0], alone.states[0])


def test_early_stopping_restores_each_members_best():
    sched = Schedule(epochs=30, batch_size=50, patience=3, restore_best=True)
    pool, ms = _mlp_members([0, 1])
    res = _mlp(pool, ms, sched)
    for k in range(2):
        rows = res.rows(k)
        best = min(rows, key=lambda r: r["val_loss"])
        assert res.best_epoch[k] == best["epoch"]
        assert res.epochs_run[k] <= res.best_epoch[k] + sched.patience
        model = MLP(MLPConfig())
        model.load_state_dict(res.states[k])
        val_loss = F.cross_entropy(model.eval()(pool.x[400:500]), pool.y[400:500]).item()
        assert abs(val_loss - best["val_loss"]) < 1e-5


def test_members_can_skip_a_shared_set_and_still_end_on_their_best():
    """Few-shot's honest protocol: only some heads are scored on test every epoch; every head
    ends on its best-validation epoch (earliest on ties)."""
    ms = [_head(0, 1e-2, 100), _head(1, 3e-3, 100)]
    ms[0].shared = frozenset()
    sched = Schedule(epochs=6, batch_size=32, monitor="val_acc", maximize=True, restore_best=True)
    res = _heads(ms, sched)
    assert all("test_acc" not in r for r in res.rows(0))
    assert all("test_acc" in r for r in res.rows(1))
    for k in range(2):
        rows = res.rows(k)
        best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))
        assert res.best_epoch[k] == best["epoch"]


# ------------------------------------------------------------------ frozen trunk, once per image


def _images(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 5
    x = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    for c in range(5):
        x[y == c, 4 * c : 4 * c + 4] = 255  # a class-dependent band of rows
    return Pool(x, y)


class _Trunk:
    """A frozen random layer (784 → 32, ReLU) that records how many members each call had."""

    def __init__(self):
        self.w = torch.randn(784, 32, generator=torch.Generator().manual_seed(9)) / 28
        self.calls: list[int] = []

    def __call__(self, raw):
        self.calls.append(raw.shape[0])
        return torch.relu((raw.float() / 255).flatten(-2) @ self.w)


def _trunk_heads(members, trunk=None, epochs=3):
    trunk = trunk or _Trunk()
    return train_stack(
        StackedLinear(),
        members,
        _images(),
        Schedule(epochs=epochs, batch_size=32),
        trainable={"weight", "bias"},
        device=CPU,
        prepare=trunk,
        shared_evals={"test": torch.arange(350, 400)},
    )


def test_members_without_rows_sit_out_of_the_trunk():
    """A member whose epoch ended is not run through the (costly) frozen trunk."""
    trunk = _Trunk()
    members = [_head(0, 1e-2, 40), _head(1, 1e-2, 100)]
    res = _trunk_heads(members, trunk=trunk, epochs=1)
    alone = _trunk_heads([members[0]], epochs=1)
    assert 1 in trunk.calls and 2 in trunk.calls
    assert _close(res.states[0], alone.states[0])


def test_stacks_trained_apart_merge_into_one_result():
    from mnistlab.train.engine import StackResult

    members = [_head(s, 1e-2, 60) for s in range(3)]
    sched = Schedule(epochs=2, batch_size=32)
    whole = _heads(members, sched)
    odd, even = _heads([members[1]], sched), _heads([members[0], members[2]], sched)
    merged = StackResult.merge([([1], odd), ([0, 2], even)])
    assert merged.seconds == odd.seconds + even.seconds
    for k in range(3):
        assert _close(merged.states[k], whole.states[k])
        assert [r["val_loss"] for r in merged.rows(k)] == pytest.approx(
            [r["val_loss"] for r in whole.rows(k)], abs=TOL
        )


def test_freed_memory_is_kept_where_glibc_allows_it():
    import platform

    from mnistlab.train import allocator

    kept = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is kept  # once per process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert kept is True
