"""The training engine against the loops it replaced (``legacy.py``), side by side in one run.

    python benchmarks/engine_bench.py [--parts stn,heads,tune,stacking] [--stn-epochs 1]
                                      [-o results/benchmarks/engine.json]

* ``stn``: the STN study's shape — 3 seeds × (STN, CNN) on all 60k training images, per-epoch
  evaluation on a 10k training subset and the 10k test set — one model at a time (legacy) vs
  one stack per model (engine); per-seed test accuracies printed for both.
* ``heads``: the few-shot heads — 5 seeds × 5 sizes × 3 learning rates, 100 epochs, 10k test
  images — on synthetic 2048-d features (timing does not depend on the values). Legacy scores
  every head on validation and test every epoch; the engine stacks each size, scores test
  every epoch only for the reported lr and the validation-chosen snapshot of the others once.
* ``tune``: digits tuning, the same fixed trial configurations (3 folds each) on the real
  0–4 data, one fold at a time (legacy ``fit``) vs the folds of a trial as one stack; no
  pruning, so both do the same trials.
* ``stacking``: one STN training step for K=3 members — one after another, ``torch.func.vmap``
  over ``functional_call`` (the torch.func ensembling recipe), and the engine's grouped
  channels-last layers — the measurement behind ``models/stack.py``.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legacy
from mnistlab.data import load_mnist, stratified_kfold
from mnistlab.models.backbones import new_linear
from mnistlab.models.mlp import MLPConfig, build_mlp
from mnistlab.models.stack import StackedLinear, Step, stack_states
from mnistlab.models.stn import StackedSTN, init_stn, to_input
from mnistlab.progress import Progress
from mnistlab.runs import environment, write_json
from mnistlab.studies.digits import tune as digits_tune
from mnistlab.studies.digits.common import CellContext, DigitsConfig, load_digits, to_flat
from mnistlab.studies.stn.common import STNConfig, StudyData, train_seeds
from mnistlab.train.engine import Member, Pool, Schedule, train_stack

CPU = torch.device("cpu")


def bench_stn(epochs: int) -> dict:
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    cfg = STNConfig(epochs=epochs, device="cpu")
    out: dict = {"epochs": epochs, "legacy": {}, "engine": {}}
    t0 = time.perf_counter()
    for model in ("stn", "baseline"):
        out["legacy"][model] = [
            legacy.train_stn(
                model == "stn",
                (x, y),
                (xt, yt),
                epochs=epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                seed=s,
                train_eval_size=cfg.train_eval_size,
            )[-1]["test_acc"]
            for s in range(cfg.seeds)
        ]
    out["legacy_seconds"] = time.perf_counter() - t0
    pool = Pool(torch.cat([x, xt]), torch.cat([y, yt]))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("stn", "baseline"):
            res = train_seeds(
                model,
                cfg,
                StudyData(pool, len(y), torch.zeros(len(yt), dtype=torch.long), ("all",)),
                device=CPU,
                out=Path(tmp),
                progress=Progress(),
                description="bench",
            )
            out["engine"][model] = [res.rows(k)[-1]["test_acc"] for k in range(cfg.seeds)]
    out["engine_seconds"] = time.perf_counter() - t0
    out["speedup"] = out["legacy_seconds"] / out["engine_seconds"]
    return out


def _heads_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pool_n = 5 * 1100  # per seed: 900 training + 200 validation rows
    x = torch.rand(pool_n + 10_000, 2048, generator=g)
    return Pool(x, torch.randint(0, 10, (len(x),), generator=g)), pool_n


def bench_heads(epochs: int = 100) -> dict:
    pool, n = _heads_data()
    test = (pool.x[n:], pool.y[n:])
    sizes, lrs, main = (10, 30, 50, 70, 90), (1e-3, 3e-3, 1e-2), 3e-3

    def rows(s, size):
        return torch.arange(s * 1100, s * 1100 + 10 * size)

    def val(s):
        return torch.arange(s * 1100 + 900, s * 1100 + 1100)

    t0 = time.perf_counter()
    legacy_best = []
    for size in sizes:
        for s in range(5):
            for lr in lrs:
                h = legacy.train_head(
                    new_linear(2048, 10, s),
                    (pool.x[rows(s, size)], pool.y[rows(s, size)]),
                    (pool.x[val(s)], pool.y[val(s)]),
                    test,
                    lr=lr,
                    epochs=epochs,
                    batch_size=32,
                    seed=s,
                )
                legacy_best.append(max(r["test_acc"] for r in h))
    legacy_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for size in sizes:
        members = [
            Member(
                seed=s,
                state=new_linear(2048, 10, s).state_dict(),
                train=rows(s, size),
                lr=lr,
                evals={"val": val(s)},
                meta={"seed": s, "lr": lr},
                shared=None if lr == main else frozenset(),
            )
            for s in range(5)
            for lr in lrs
        ]
        res = train_stack(
            StackedLinear(),
            members,
            pool,
            Schedule(
                epochs=epochs, batch_size=32, monitor="val_acc", maximize=True, restore_best=True
            ),
            trainable={"weight", "bias"},
            device=CPU,
            shared_evals={"test": torch.arange(n, len(pool.y))},
        )
        w = torch.stack([st["weight"] for st in res.states])  # the validation-chosen heads
        b = torch.stack([st["bias"] for st in res.states])
        (test[0] @ w.reshape(-1, 2048).T + b.reshape(-1)).view(len(test[0]), -1, 10).argmax(2)
    engine_seconds = time.perf_counter() - t0
    return {
        "heads": 75,
        "epochs": epochs,
        "legacy_seconds": legacy_seconds,
        "engine_seconds": engine_seconds,
        "speedup": legacy_seconds / engine_seconds,
        "legacy_mean_best_test_acc": sum(legacy_best) / len(legacy_best),
        "features": "synthetic (uniform random, 2048-d): timing only",
    }


class _NoPruning:
    number = 0

    def report(self, value, step):
        pass

    def should_prune(self):
        return False


def bench_tune(trials: int = 6) -> dict:
    cfg = DigitsConfig(device="cpu")
    data = load_digits(cfg.source_digits)
    rng = random.Random(0)
    configs = [
        {
            "lr": 10 ** rng.uniform(-4, -2),
            "l2": 10 ** rng.uniform(-7, -3),
            "batch_size": rng.choice((32, 64, 128, 256)),
        }
        for _ in range(trials)
    ]
    folds = stratified_kfold(data.y_train, cfg.folds, seed=cfg.seed)
    x = to_flat(data.x_train)
    t0 = time.perf_counter()
    legacy_acc = []
    for hp in configs:
        accs = []
        for k, (tr, va) in enumerate(folds):
            model = build_mlp(MLPConfig(), seed=cfg.seed + k)
            legacy.fit(
                model,
                (x[tr], data.y_train[tr]),
                (x[va], data.y_train[va]),
                lr=hp["lr"],
                l2=hp["l2"],
                batch_size=hp["batch_size"],
                max_epochs=cfg.tune_max_epochs,
                patience=cfg.tune_patience,
                seed=cfg.seed + k,
            )
            accs.append(legacy.evaluate(model, x[va], data.y_train[va])[1])
        legacy_acc.append(sum(accs) / len(accs))
    legacy_seconds = time.perf_counter() - t0
    ctx = CellContext(cfg, Path(tempfile.mkdtemp()), CPU, Progress(), None, lambda name: {})
    ctx._source = data
    t0 = time.perf_counter()
    engine_acc = []
    for hp in configs:
        scores, _ = digits_tune.run_trial(ctx, _NoPruning(), hp)
        engine_acc.append(sum(scores["fold_acc"]) / len(scores["fold_acc"]))
    engine_seconds = time.perf_counter() - t0
    return {
        "trials": trials,
        "folds": cfg.folds,
        "legacy_seconds": legacy_seconds,
        "engine_seconds": engine_seconds,
        "speedup": legacy_seconds / engine_seconds,
        "legacy_cv_acc": legacy_acc,
        "engine_cv_acc": engine_acc,
    }


def _step_times(use_stn: bool, k: int, steps: int) -> dict[str, float]:
    """ms per member per SGD step for K members: one after another, vmap, grouped."""
    from torch.func import functional_call, stack_module_state, vmap

    x = torch.randint(0, 256, (k, 64, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (k, 64))
    models = [init_stn(use_stn, s).train() for s in range(k)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]

    def solo():
        for m, o, xx, yy in zip(models, opts, x, y, strict=True):
            o.zero_grad()
            F.cross_entropy(m(to_input(xx)), yy).backward()
            o.step()

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, xx, yy):
        return F.cross_entropy(functional_call(base, (p, b), (to_input(xx),)), yy)

    def vmapped():
        loss = vmap(one, randomness="different")(params, buffers, x, y).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            torch._foreach_add_(list(params.values()), grads, alpha=-0.01)

    arch = StackedSTN(use_stn, CPU)
    states = stack_states([m.state_dict() for m in models])
    p = {n: t.clone().requires_grad_() for n, t in states.items()}

    def grouped():
        logits = arch.forward(p, to_input(x), Step(True))
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / 64
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            torch._foreach_add_(list(p.values()), grads, alpha=-0.01)

    out = {}
    for label, fn in (("one after another", solo), ("vmap", vmapped), ("grouped", grouped)):
        for _ in range(5):
            fn()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        out[label] = 1000 * (time.perf_counter() - t) / steps / k
    return out


def bench_stacking(k: int = 3, steps: int = 30) -> dict:
    """ms per member per training step of the tutorial STN (and its CNN) at batch 64."""
    times = {}
    for use_stn in (True, False):
        for label, ms in _step_times(use_stn, k, steps).items():
            times[f"{'stn' if use_stn else 'cnn'}/{label}"] = ms
    return {"k": k, "ms_per_member_step": times}


PARTS = {"stn": bench_stn, "heads": bench_heads, "tune": bench_tune, "stacking": bench_stacking}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="stacking,heads,tune,stn")
    parser.add_argument("--stn-epochs", type=int, default=1)
    parser.add_argument("-o", "--output", default="results/benchmarks/engine.json")
    args = parser.parse_args()
    result: dict = {"environment": environment(), "threads": torch.get_num_threads()}
    for part in args.parts.split(","):
        t = time.perf_counter()
        kwargs = {"epochs": args.stn_epochs} if part == "stn" else {}
        result[part] = PARTS[part](**kwargs)
        flat = {k: v for k, v in result[part].items() if not isinstance(v, dict | list)}
        print(f"{part} ({time.perf_counter() - t:.0f} s):", flat)
        if part == "stacking":
            for k, v in result[part]["ms_per_member_step"].items():
                print(f"  {k}: {v:.2f} ms per member-step")
        write_json(args.output, result)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
