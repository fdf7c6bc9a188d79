"""digits-best, transfer half: source models per seed and the transfer recipe chosen on the
target digits' validation images.

Why the source is a transfer choice: the wide search picks the recipe with the best 0–4
cross-validated accuracy, and what makes 0–4 accurate (dropout, a long cosine run) is not what
makes its frozen layers useful for 5–9 (benchmarks/digits_source_pilot.py: on 5–9 validation
a source trained with dropout 0.2 gave frozen heads 71 %, the same without dropout 79–82 %).
So the sources offered are the searched recipe and a small grid around a simple one (Adam 1e-3,
batch 128, early stopping on a 10 % split; L2 × augmentation), each trained once per transfer
seed — one model per seed, never an ensemble — and chosen per variant on 5–9 validation.

Why stages: source, head and (when unfreezing) the lr ratio are chosen one after another, each
on mean validation accuracy over the seeds, with the others at their defaults (coordinate-wise;
a full product would cost ×10). Every ablation changes one ingredient in the stage that chose
it, so it is a single-ingredient comparison.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mnistlab.data import parse_digits
from mnistlab.models.mlp import MLP, MLPConfig, StackedMLP, build_mlp
from mnistlab.stats import mean_ci
from mnistlab.studies.digits import tune
from mnistlab.studies.digits.common import (
    CellContext,
    load_digits,
    source_split,
    test_metrics,
    to_flat,
)
from mnistlab.studies.digits.transfer import (
    Reused,
    frozen_trunk,
    transfer_schedule,
    transfer_seeds,
    transfer_split,
)
from mnistlab.train.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.train.engine import Member, Pool, Schedule, StackResult, identity, train_stack
from mnistlab.train.evaluate import solo

SIMPLE = {"lr": 1e-3, "batch_size": 128}  # + L2 and augmentation from the grid; nothing else
SEARCHED = "searched"


def simple_name(l2: float, augment: str) -> str:
    return f"simple L2 {l2:g}, {augment}"


def source_recipes(cfg, found: dict) -> dict[str, dict]:
    """The sources on offer: the searched recipe and the simple grid (L2 × augmentation)."""
    out = {SEARCHED: dict(found["params"])}
    for l2, augment in itertools.product(cfg.source_l2s, cfg.source_augments):
        out[simple_name(l2, augment)] = {**SIMPLE, "l2": l2, "augment": augment}
    return out


def source_path(out: Path, name: str, seed: int) -> Path:
    return out / "sources" / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', name)}_seed{seed}.pt"


# ------------------------------------------------------------------------------ sources


def train_sources(ctx: CellContext, found: dict) -> dict:
    """Every source recipe once per transfer seed (seed s: init, batch order, dropout and
    augmentation streams); each model's 0–4 test accuracy is reported, never used to choose."""
    cfg, seeds = ctx.cfg, transfer_seeds(ctx.cfg)
    recipes = source_recipes(cfg, found)
    hp = recipes[SEARCHED]
    horizon = cfg.best_max_epochs if hp.get("schedule") == "cosine" else None
    models, seconds = tune.retrain_together(
        ctx, [hp] * len(seeds), found["epochs"], horizon, seeds=seeds
    )
    trained = {SEARCHED: (models, [found["epochs"]] * len(seeds), seconds / len(seeds))}
    simple = {n: r for n, r in recipes.items() if n != SEARCHED}
    if simple:
        trained.update(_early_stopped(ctx, simple, seeds))
    out = {}
    for name, (models, epochs, seconds) in trained.items():
        accs = []
        for seed, model in zip(seeds, models, strict=True):
            save_checkpoint(
                source_path(ctx.out, name, seed),
                {
                    "config": model.config.to_dict(),
                    "model": model.state_dict(),
                    "hp": recipes[name],
                },
            )
            accs.append(test_metrics(model, ctx.source.x_test, ctx.source.y_test)["test_acc"])
        out[name] = {
            "hp": recipes[name],
            "epochs": epochs,
            "source_test_acc": accs,
            "seconds_per_model": seconds,
        }
    return out


def _early_stopped(ctx: CellContext, recipes: dict[str, dict], seeds: list[int]) -> dict:
    """The simple recipes × seeds as one stack on 90 % of the source images, each stopped by
    its validation loss on the other 10 % (best weights restored)."""
    cfg = ctx.cfg
    tr, va = source_split(ctx)
    members, shapes = [], set()
    for name, hp in recipes.items():
        mcfg, template, _ = tune.recipe(cfg, hp)
        shapes.add(replace(mcfg, dropout=0.0))
        members += [
            replace(
                template,
                seed=seed,
                state=build_mlp(mcfg, seed=seed).state_dict(),
                train=tr,
                evals={"val": va},
                meta={"source": name, "seed": seed},
            )
            for seed in seeds
        ]
    (shape,) = shapes
    res = train_stack(
        StackedMLP(shape),
        members,
        Pool(ctx.source.x_train, ctx.source.y_train),
        Schedule(
            epochs=cfg.max_epochs,
            batch_size=SIMPLE["batch_size"],
            patience=cfg.best_patience,
            restore_best=True,
        ),
        trainable={n for n, _ in MLP(shape).named_parameters()},
        device=ctx.device,
        prepare=to_flat,
        checkpoint=ctx.out / "sources" / "resume.pt",
        progress=ctx.progress,
        description=f"digits-best: {len(recipes)} simple sources × {len(seeds)} seeds",
    )
    out = {}
    for name in recipes:
        ks = [k for k, m in enumerate(members) if m.meta["source"] == name]
        out[name] = (
            [solo(MLP(shape), res.states[k]) for k in ks],
            [res.best_epoch[k] for k in ks],
            res.seconds / len(members),
        )
    return out


def load_sources(out: Path, names, seeds: list[int]) -> dict[str, dict[int, MLP]]:
    def one(name: str, seed: int) -> MLP:
        saved = load_checkpoint(source_path(out, name, seed))
        return solo(MLP(MLPConfig.from_dict(saved["config"])), saved["model"], name)

    return {name: {seed: one(name, seed) for seed in seeds} for name in names}


# ------------------------------------------------------------------------------ transfer


@dataclass(frozen=True)
class Recipe:
    source: str
    lr: float
    l2: float
    augment: str
    factor: float = 1.0  # lr ratio when unfreezing


class Grid:
    """Trains recipes × seeds on the target digits and scores them: mean validation accuracy
    (the choice) and test accuracy per seed (the report; never read by a choice)."""

    def __init__(self, ctx: CellContext, sources: dict[str, dict[int, MLP]]):
        self.ctx, self.sources = ctx, sources
        self.target = load_digits(ctx.cfg.target_digits, ctx.cfg.limit, ctx.data_dir)
        self.seeds = transfer_seeds(ctx.cfg)
        self.splits = {s: transfer_split(ctx.cfg, self.target, s) for s in self.seeds}
        self.k = len(parse_digits(ctx.cfg.target_digits))
        self.pool = Pool(self.target.x_train, self.target.y_train)

    def reused(self, r: Recipe, seed: int, n: int) -> Reused:
        return Reused(self.sources[r.source][seed], n, self.k, seed)

    def fit(self, recipes: list[Recipe], n: int, what: str, init=None, unfrozen=0) -> list[dict]:
        """Every recipe × seed from ``init(recipe, seed)`` (default: the recipe's source of
        that seed, its first ``n`` blocks frozen, a new head); the top ``unfrozen`` blocks and
        the head train. Heads on frozen blocks without augmentation train on those blocks'
        outputs computed once per image (each source and seed its own); the others run their
        frozen blocks inside the stack. One stack per kind and batch-norm flag."""
        init = init or (lambda r, seed: self.reused(r, seed, n))
        pairs = [(r, seed) for r in recipes for seed in self.seeds]
        models = [init(r, seed) for r, seed in pairs]
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, (r, seed) in enumerate(pairs):
            cached = not unfrozen and tune.AUGMENTS[r.augment] is None
            bn = self.sources[r.source][seed].config.batch_norm
            groups.setdefault((cached, bn), []).append(i)
        parts = []
        for (cached, bn), where in sorted(groups.items()):
            mine = [pairs[i] for i in where]
            shape = MLPConfig(hidden=(100,) * n, n_classes=self.k, batch_norm=bn)
            if cached:
                (pool, rows), arch, prepare = (
                    self._features(mine, n),
                    StackedMLP(shape, "stack", n),
                    identity,
                )
            else:
                (pool, rows), arch = self._images(mine), StackedMLP(shape, "stack", 0, n - unfrozen)
                prepare = to_flat
            members = [self._member(*pairs[i], models[i], unfrozen, rows) for i in where]
            res = train_stack(
                arch,
                members,
                pool,
                transfer_schedule(self.ctx.cfg),
                trainable={k for k, p in models[where[0]].named_parameters() if p.requires_grad},
                device=self.ctx.device,
                prepare=prepare,
                progress=self.ctx.progress,
                description=f"digits-best: {what}, {len(recipes)} × {len(self.seeds)} seeds",
            )
            parts.append((where, res))
        return self._score(recipes, pairs, models, StackResult.merge(parts))

    def _images(self, pairs) -> tuple[Pool, dict]:
        """The target images, and each (source, seed)'s training and validation indices."""
        return self.pool, {(r.source, seed): self.splits[seed] for r, seed in pairs}

    def _features(self, pairs, n: int) -> tuple[Pool, dict]:
        """The first ``n`` frozen blocks' outputs for each (source, seed)'s training and
        validation images, one block of rows per pair, and each pair's indices into it."""
        xs, ys, rows, at = [], [], {}, 0
        for source, seed in dict.fromkeys((r.source, seed) for r, seed in pairs):
            tr, va = self.splits[seed]
            idx = torch.cat([tr, va])
            trunk = frozen_trunk(self.sources[source][seed], n, self.ctx.device)
            xs.append(trunk(self.target.x_train[idx].to(self.ctx.device)).cpu())
            ys.append(self.target.y_train[idx])
            rows[(source, seed)] = (
                at + torch.arange(len(tr)),
                at + len(tr) + torch.arange(len(va)),
            )
            at += len(idx)
        return Pool(torch.cat(xs), torch.cat(ys)), rows

    def _member(self, r: Recipe, seed: int, model: Reused, unfrozen: int, rows: dict) -> Member:
        source = self.sources[r.source][seed]
        tr, va = rows[(r.source, seed)]
        return Member(
            seed=seed,
            state=model.state_dict(),
            train=tr,
            lr=r.lr * r.factor,
            weight_decay=r.l2,
            dropout=source.config.dropout if unfrozen else 0.0,  # only blocks that train drop
            augment=tune.AUGMENTS[r.augment],
            evals={"val": va},
            meta={"recipe": r.__dict__, "seed": seed},
        )

    def _score(self, recipes, pairs, models, res: StackResult) -> list[dict]:
        out = []
        for r in recipes:
            val, test, states = [], [], []
            for k, (rk, _) in enumerate(pairs):
                if rk != r:
                    continue
                val.append(res.rows(k)[res.best_epoch[k] - 1]["val_acc"])
                model = solo(models[k], res.states[k], "transfer member")
                test.append(test_metrics(model, self.target.x_test, self.target.y_test)["test_acc"])
                states.append(res.states[k])
            out.append(
                {
                    "recipe": dict(r.__dict__),
                    "val_acc": sum(val) / len(val),
                    "test_acc": test,
                    "states": states,
                }
            )
        return out


def choose(scored: list[dict]) -> dict:
    """The best mean validation accuracy; ties go to the earlier (simpler) recipe."""
    return max(scored, key=lambda r: r["val_acc"])


def ablation(scored: list[dict], chosen: dict, defaults: dict) -> dict[str, float]:
    """Mean test accuracy lost per seed when one ingredient of ``chosen`` goes back to its
    default — the row of ``scored`` that differs in that ingredient only; an elastic
    augmentation is also compared with the same augmentation without it."""
    twins = [(key, default) for key, default in defaults.items()]
    if chosen["recipe"]["augment"].endswith("-elastic"):
        twins.append(("augment", chosen["recipe"]["augment"].removesuffix("-elastic")))
    out = {}
    for key, value in twins:
        if chosen["recipe"][key] == value:
            continue
        twin = {**chosen["recipe"], key: value}
        match = next((r for r in scored if r["recipe"] == twin), None)
        if match is not None:
            drop = [a - b for a, b in zip(chosen["test_acc"], match["test_acc"], strict=True)]
            out[f"{key} → {value}"] = sum(drop) / len(drop)
    return out


def transfer(ctx: CellContext, sources: dict) -> dict:
    """Per frozen variant: the source (stage 1, default head), then the head (stage 2); the
    better variant on validation then has its top two blocks unfrozen (stage 3)."""
    cfg = ctx.cfg
    grid = Grid(ctx, load_sources(ctx.out, list(sources), transfer_seeds(cfg)))
    default = {"lr": cfg.transfer_lr, "l2": 0.0, "augment": "none"}
    stages, chosen = {}, {}
    for variant, n in (("frozen5", 5), ("reuse4", 4)):
        first = grid.fit([Recipe(s, **default) for s in sources], n, f"{variant} sources")
        src = choose(first)["recipe"]["source"]
        heads = itertools.product(cfg.head_lrs, cfg.head_l2s, cfg.head_augments)
        second = grid.fit([Recipe(src, *h) for h in heads], n, f"{variant} heads on {src}")
        chosen[variant] = choose(second)
        stages[variant] = {
            "sources": first,
            "heads": second,
            "ablation": {
                **source_ablation(first, src, sources, cfg),
                **ablation(second, chosen[variant], default),
            },
        }
    base = max(("frozen5", "reuse4"), key=lambda v: chosen[v]["val_acc"])
    third = _unfreeze(grid, cfg, chosen[base], 5 if base == "frozen5" else 4)
    chosen["unfreeze2"] = choose(third)
    stages["unfreeze2"] = {
        "unfreeze": third,
        "ablation": ablation(third, chosen["unfreeze2"], {"augment": "none"}),
    }
    return {v: _summary(v, chosen[v], stages[v], grid.seeds, base) for v in stages}


def _unfreeze(grid: Grid, cfg, base: dict, n: int) -> list[dict]:
    """The chosen frozen recipe's trained models, top two blocks unfrozen, over lr ratios ×
    augmentations."""
    r0 = Recipe(**base["recipe"])
    states = dict(zip(grid.seeds, base["states"], strict=True))

    def init(r: Recipe, seed: int) -> Reused:
        model = grid.reused(r, seed, n)
        model.load_state_dict(states[seed])
        model.unfreeze(2)
        return model

    recipes = [
        replace(r0, factor=f, augment=a)
        for f, a in itertools.product(cfg.unfreeze_factors, cfg.head_augments)
    ]
    return grid.fit(recipes, n, f"unfreeze2 of {n} layers", init=init, unfrozen=2)


def source_ablation(first: list[dict], src: str, sources: dict, cfg) -> dict[str, float]:
    """Test accuracy lost (default head) when the chosen source becomes the searched recipe,
    or loses its L2 or its augmentation (the simple grid's first L2, no augmentation)."""
    hp = sources[src]["hp"]
    twins = {"source → searched": SEARCHED}
    if src != SEARCHED:
        twins["source L2 → " + f"{cfg.source_l2s[0]:g}"] = simple_name(
            cfg.source_l2s[0], hp["augment"]
        )
        twins["source augmentation → none"] = simple_name(hp["l2"], "none")
    row = {r["recipe"]["source"]: r for r in first}
    out = {}
    for label, twin in twins.items():
        if twin != src and twin in row:
            drop = [a - b for a, b in zip(row[src]["test_acc"], row[twin]["test_acc"], strict=True)]
            out[label] = sum(drop) / len(drop)
    return out


def _summary(variant: str, chosen: dict, stage: dict, seeds: list[int], base: str) -> dict:
    rows = [r for key in ("sources", "heads", "unfreeze") for r in stage.get(key, [])]
    return {
        "chosen": chosen["recipe"],
        "val_acc": chosen["val_acc"],
        "test_acc": mean_ci(chosen["test_acc"]),
        "per_seed_test_acc": chosen["test_acc"],
        "seeds": seeds,
        "ablation": stage["ablation"],
        "base_variant": base if variant == "unfreeze2" else None,
        "recipes": [{k: r[k] for k in ("recipe", "val_acc", "test_acc")} for r in rows],
        "source_val_acc": {r["recipe"]["source"]: r["val_acc"] for r in stage.get("sources", [])},
    }
