"""The section of ``digits-best``: the best honest protocol's source model and transfer
variants beside the as-specified study's, with what the searches chose and the ablations."""

from __future__ import annotations

from pathlib import Path

from mnistlab import runs
from mnistlab.report.sections.common import (
    Section,
    Table,
    opening,
    pct,
    pm,
    published,
    target,
)
from mnistlab.report.verdict import compare, signed
from mnistlab.stats import compare_correct, mean_ci, paired


def digits_best(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("digits-best", folder)
    if m is None:
        return sec
    _best_source(sec, m, cfg, baseline)
    _transfer_sources(sec, m)
    rows = [_best_transfer_row(v, r, baseline) for v, r in m["transfer"].items()]
    sec.tables.append(
        Table(
            [
                "variant",
                "as specified",
                "best protocol",
                "difference",
                "chosen on validation",
                "ablation (points lost)",
                "target",
            ],
            rows,
            f"transfer to {cfg['target_digits']} with {cfg['per_digit']} images per digit: test "
            "accuracy, mean ± 95 % CI over the same seeds and draws",
        )
    )
    return sec


def _best_source(sec: Section, m: dict, cfg: dict, baseline: Path | None) -> None:
    """The searched source recipe, against the as-specified tuned model, and its ablation."""
    found, src = m["search"], m["source"]
    best = src["best"]
    goal = published()["targets"]["digits_source_test_precision"]
    sec.paragraphs.append(
        f"Source digits {cfg['source_digits']}: a {cfg['folds']}-fold cross-validated Optuna "
        f"search ({found['n_trials']} trials, {found['n_pruned']} pruned) over lr, L2, batch "
        "size, batch norm, dropout, lr schedule and augmentation chose: "
        + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in found["params"].items()
        )
        + f" (CV accuracy {pct(found['cv_acc'])}); retrained on all source images for "
        f"{found['epochs']} epochs: test precision {pct(best['test_precision'])}, accuracy "
        f"{pct(best['test_acc'])} — target {target(100 * best['test_precision'], goal)}."
    )
    if baseline is not None and (baseline / "tune" / "result.json").is_file():
        tuned = runs.read_json(baseline / "tune" / "result.json")
        c = compare_correct(best["test_correct"], tuned["test_correct"], best["test_n"])
        sec.paragraphs.append(
            f"Against the as-specified tuned model (test precision "
            f"{pct(tuned['test_precision'])}), on test accuracy "
            f"{compare(c, 'the searched recipe', 'the tuned model')}."
        )
    abl = [
        [
            k.removeprefix("without "),
            pct(v["test_precision"]),
            f"{100 * (best['test_precision'] - v['test_precision']):+.2f}",
        ]
        for k, v in src.items()
        if k.startswith("without ")
    ]
    if abl:
        sec.tables.append(
            Table(
                ["ingredient removed", "test precision", "points lost"],
                abl,
                "ablation of the searched source recipe (one retrain each)",
            )
        )


def _transfer_sources(sec: Section, m: dict) -> None:
    """The sources the transfer chose among (one model per seed each): what each scores on the
    source digits' test images and, with the default head, on the target validation images."""
    tr = m["transfer"]
    rows = []
    for name, s in m["sources"].items():
        mark = [v for v in ("frozen5", "reuse4") if tr[v]["chosen"]["source"] == name]
        rows.append(
            [
                name + (f" (chosen: {', '.join(mark)})" if mark else ""),
                ", ".join(str(e) for e in s["epochs"]),
                pm(mean_ci(s["source_test_acc"])),
                *(pct(tr[v]["source_val_acc"][name]) for v in ("frozen5", "reuse4")),
            ]
        )
    sec.tables.append(
        Table(
            ["transfer source", "epochs per seed", "source test acc.", "frozen5 val", "reuse4 val"],
            rows,
            "the transfer sources, each trained once per seed; chosen per variant on target "
            "validation accuracy with the default head (source test accuracy shown, never used)",
        )
    )
    sec.paragraphs.append(_source_contrast(m))


def _source_contrast(m: dict) -> str:
    """The searched recipe against frozen5's chosen source on both measures; the sentence's
    verdict follows the numbers (it says whether the orders agree)."""
    src, chosen = m["sources"], m["transfer"]["frozen5"]["chosen"]["source"]
    val = m["transfer"]["frozen5"]["source_val_acc"]
    if chosen == "searched":
        return "Frozen five layers: the searched recipe was also the best source on validation."
    acc = {k: sum(src[k]["source_test_acc"]) / len(src[k]["source_test_acc"]) for k in src}
    agree = (acc["searched"] > acc[chosen]) == (val["searched"] > val[chosen])
    return (
        f"Frozen five layers: the searched recipe's models score {pct(acc['searched'])} on the "
        f"source test images and {pct(val['searched'])} on target validation; the chosen "
        f"source ({chosen}) {pct(acc[chosen])} and {pct(val[chosen])} — "
        + (
            "the two orders agree."
            if agree
            else "the orders disagree: accuracy on the source digits did not say which hidden "
            "layers serve new digits better."
        )
    )


def _best_transfer_row(v: str, r: dict, baseline: Path | None) -> list[str]:
    """One transfer variant: as specified vs best, paired by seed (the seed fixes the draw,
    so only seeds both protocols ran are paired)."""
    spec_acc, c = None, None
    if baseline is not None and (baseline / "transfer" / f"{v}.json").is_file():
        spec = runs.read_json(baseline / "transfer" / f"{v}.json")
        spec_acc = [s["test_acc"] for s in spec["seeds"]]
        spec_by_seed = {s["seed"]: s["test_acc"] for s in spec["seeds"]}
        best_by_seed = dict(zip(r["seeds"], r["per_seed_test_acc"], strict=True))
        common = sorted(set(spec_by_seed) & set(best_by_seed))
        if common:
            c = paired([best_by_seed[s] for s in common], [spec_by_seed[s] for s in common])
    recipe = r["chosen"]
    chosen = (
        f"{recipe['source']} source, lr {recipe['lr'] * recipe['factor']:g}, L2 "
        f"{recipe['l2']:g}, augmentation {recipe['augment']}"
    )
    goal = published()["targets"]["transfer_test_acc"].get(v)
    return [
        v,
        pm(mean_ci(spec_acc)) if spec_acc else "—",
        pm(r["test_acc"]),
        signed(c) if c else "—",
        chosen,
        "; ".join(f"{k}: {100 * d:+.2f}" for k, d in r["ablation"].items()) or "—",
        target(100 * r["test_acc"][0], goal),
    ]
