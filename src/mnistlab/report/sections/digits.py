"""Sections of the digits studies: the 0–4 source task, the transfer to 5–9, and the best
honest protocol for both."""

from __future__ import annotations

from pathlib import Path

from mnistlab import runs
from mnistlab.report.sections.common import (
    Section,
    Table,
    against_range,
    count,
    fig,
    opening,
    pct,
    pm,
    published,
    published_table,
    span,
)
from mnistlab.report.verdict import amount, answer, compare, qualifier, signed
from mnistlab.stats import Comparison, mean_ci, paired


def digits(folder: Path | None, baseline: Path | None = None) -> list[Section]:
    """Two sections: the source task (part 1) and the transfer (part 2)."""
    sec, m, cfg = opening("digits", folder)
    sec2 = Section("transfer", "Transfer to new digits with few images per digit")
    if m is None:
        sec2.missing = sec.missing
        return [sec, sec2]
    src, tgt = cfg["source_digits"], cfg["target_digits"]
    sec.title = f"Digits {src}: the 5×100 MLP, tuning, batch norm, dropout"
    sec2.title = f"Transfer {src} → {tgt} with {cfg['per_digit']} images per digit"

    def read(p: str) -> dict | None:
        return runs.read_json(folder / p) if (folder / p).is_file() else None

    pre, tune = read("pretrain/result.json"), read("tune/result.json")
    bn, do = read("batchnorm/result.json"), read("dropout/result.json")
    if pre:
        hp = pre["hyperparameters"]
        sec.paragraphs.append(
            f"Baseline 5×100 ReLU MLP on digits {src} (Xavier init, Adam lr {hp['lr']:g}, L2 "
            f"{hp['l2']:g} as Adam's coupled weight decay on weight matrices, early stopping on "
            f"validation loss): best epoch {pre['best_epoch']}, test precision "
            f"{pct(pre['test_precision'])}, accuracy {pct(pre['test_acc'])}. Checkpoints: "
            f"{', '.join(pre['checkpoints'])}."
        )
    if tune:
        bst = tune["best"]
        sec.paragraphs.append(
            f"Cross-validated tuning ({tune['folds']}-fold stratified, Optuna TPE, "
            f"{tune['n_trials']} trials of which {tune['n_pruned']} pruned): best lr "
            f"{bst['lr']:.3g}, L2 {bst['l2']:.3g}, batch {bst['batch_size']}; CV accuracy "
            f"{pct(tune['cv_mean_acc'])} ± {pct(tune['cv_sd_acc'])} (sd). Retrained on all "
            f"{src} training images for {tune['retrain_epochs']} epochs: test precision "
            f"{pct(tune['test_precision'])}, accuracy {pct(tune['test_acc'])}."
        )
    if bn:
        _batchnorm(sec, bn, folder)
    if do:
        _dropout(sec, do, folder)
    sec.tables += _geron_source(pre, tune, bn, do)
    _transfer(sec2, folder, cfg)
    if not sec2.paragraphs:
        sec2.missing = "the transfer parts have not run (mnistlab run digits --part transfer)"
    return [sec, sec2]


def _per_seed(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows]


def _reach(e: int | None) -> str:
    return f"{e}" if e is not None else "never"


def _faster(bn: dict) -> tuple[Comparison, str]:
    """Converging faster, over the seeds: the paired test of the epochs each run needed to
    reach the target validation accuracy (a run that never reached it counts as its epoch
    cap + 1, so it is never called faster)."""
    by = bn["by_seed"]
    cap = max(r["epochs_run"] for rs in by.values() for r in rs) + 1
    epochs = {k: [r["epochs_to_target"] or cap for r in rs] for k, rs in by.items()}
    c = paired(epochs["plain"], epochs["batchnorm"])  # > 0: batch norm needed fewer epochs
    text = ", ".join(
        f"{_reach(b['epochs_to_target'])} vs {_reach(p['epochs_to_target'])}"
        for b, p in zip(by["batchnorm"], by["plain"], strict=True)
    )
    return c, text


def _batchnorm(sec: Section, bn: dict, folder: Path) -> None:
    by, goal = bn["by_seed"], bn["target_val_acc"]
    n = len(bn["seeds"])
    acc = {k: _per_seed(rs, "test_acc") for k, rs in by.items()}
    prec = {k: mean_ci(_per_seed(rs, "test_precision")) for k, rs in by.items()}
    c = paired(acc["batchnorm"], acc["plain"])
    fast, epochs = _faster(bn)
    sec.paragraphs.append(
        f"**Batch norm — converges faster?** {answer(fast)}: epochs to {pct(goal, 0)} "
        f"validation accuracy with vs without batch norm, seed by seed: {epochs} "
        f"(epochs batch norm saves, mean over seeds: {signed(fast, scale=1, unit='epoch')})."
    )
    sec.paragraphs.append(
        f"**Better model?** {answer(c)}: test precision {pm(prec['batchnorm'])} with batch norm "
        f"vs {pm(prec['plain'])} without ({count(n, 'seed')}, each pairing both models' "
        f"initialisation stream and batch order); on test accuracy "
        f"{compare(c, 'the model with batch norm', 'the one without')}. Epochs are not free: "
        f"{_epoch_seconds(by['batchnorm']):.2f} s per epoch with batch norm vs "
        f"{_epoch_seconds(by['plain']):.2f} s without."
    )
    sec.figures += fig(
        folder / "batchnorm",
        "curves",
        "Learning curves with and without batch norm, first seed (dashed: train)",
    )


def _epoch_seconds(rows: list[dict]) -> float:
    return sum(r["seconds"] / max(r["epochs_run"], 1) for r in rows) / len(rows)


def chosen_rate(do: dict) -> str:
    """The dropout rate validation chose: the highest mean best-epoch validation accuracy over
    the seeds (ties go to the smaller rate)."""
    by = do["by_seed"]
    return max(by, key=lambda r: (sum(_per_seed(by[r], "val_acc_at_best")) / len(by[r]), -float(r)))


def _dropout(sec: Section, do: dict, folder: Path) -> None:
    by = do["by_seed"]
    chosen = chosen_rate(do)
    base = by["0.0"]
    gap = mean_ci(_per_seed(base, "gap_acc_at_best"))
    sec.paragraphs.append(
        f"Overfitting: at its best epoch the tuned model without dropout has a train–validation "
        f"accuracy gap of {pm(gap, unit=' points')} (over {count(len(base), 'seed')})."
    )
    sec.tables.append(_dropout_table(by))
    sec.figures += fig(folder / "dropout", "curves", "Learning curves per dropout rate, first seed")
    if chosen == "0.0":
        sec.paragraphs.append(
            "**Does dropout help?** Not on validation: no rate reached a higher mean validation "
            "accuracy than the model without dropout (a choice on validation data, no "
            f"significance test), so the chosen model is the one without (test precision "
            f"{pm(mean_ci(_per_seed(base, 'test_precision')))})."
        )
        return
    c = paired(_per_seed(by[chosen], "test_acc"), _per_seed(base, "test_acc"))
    sec.paragraphs.append(
        f"**Does dropout help?** {answer(c)}: validation chose dropout {chosen}; its test "
        f"precision is {pm(mean_ci(_per_seed(by[chosen], 'test_precision')))} vs "
        f"{pm(mean_ci(_per_seed(base, 'test_precision')))} without; on test accuracy "
        f"{compare(c, f'dropout {chosen}', 'no dropout')}."
    )


def _dropout_table(by: dict[str, list[dict]]) -> Table:
    rows = []
    for rate, rs in by.items():
        rows.append(
            [
                rate,
                pm(mean_ci(_per_seed(rs, "gap_acc_at_best"))),
                pm(mean_ci(_per_seed(rs, "val_acc_at_best"))),
                pm(mean_ci(_per_seed(rs, "test_precision"))),
                pm(mean_ci(_per_seed(rs, "best_epoch")), 1, 1, ""),
            ]
        )
    return Table(
        ["dropout", "train−val acc gap", "val acc at best epoch", "test precision", "best epoch"],
        rows,
        "mean ± 95 % CI over seeds; the rate is chosen on mean validation accuracy, test "
        "precision is reported, not used",
    )


def _geron_source(pre, tune, bn, do) -> list[Table]:
    pub = published()["geron_digits"]["source_task"]
    rows = []
    ours = {
        "baseline": pre and pre["test_acc"],
        "tuned": tune and tune["test_acc"],
        "batch norm": bn and mean_ci(_per_seed(bn["by_seed"]["batchnorm"], "test_acc"))[0],
        "dropout": do and mean_ci(_per_seed(do["by_seed"][chosen_rate(do)], "test_acc"))[0],
    }
    for name, (lo, hi) in pub.items():
        if ours.get(name) is not None:
            v = 100 * ours[name]
            rows.append([name, span(lo, hi), f"{v:.2f} %", against_range(v, lo, hi, "Géron")])
    src = published()["geron_digits"]
    return published_table(
        ["model", "published (accuracy)", "this run (accuracy)", "comparison"],
        rows,
        f"Published: {src['source']}. {src['note']}",
    )


def _transfer(sec: Section, folder: Path, cfg: dict) -> None:
    t = folder / "transfer"
    order = ("scratch", "frozen5", "cached5", "reuse4", "unfreeze2")
    variants = {v: runs.read_json(t / f"{v}.json") for v in order if (t / f"{v}.json").is_file()}
    if not variants:
        return
    any_v = next(iter(variants.values()))
    sec.paragraphs.append(
        f"Transfer to digits {cfg['target_digits']} with {any_v['n_train']} training images "
        f"({cfg['per_digit']} per digit), {any_v['n_val']} validation and {any_v['n_test']} test "
        f"images; {count(len(any_v['seeds']), 'seed')}, each a different draw, the same for every "
        "variant. Every seed has its own source model: the tuned recipe (without batch norm) "
        "retrained with that seed, so the intervals include what retraining the source changes"
        f"{_sources_text(folder)}. One stopping rule for every variant: early stopping on "
        "validation loss, best weights restored."
    )
    sec.tables.append(_transfer_table(variants))
    acc = {v: [s["test_acc"] for s in r["seeds"]] for v, r in variants.items()}
    if "frozen5" in variants and "cached5" in variants:
        sec.paragraphs.append(_caching_sentence(variants["frozen5"], variants["cached5"], acc))
    if "scratch" in variants and len(variants) > 1:
        sec.paragraphs.append(_helped_sentence(variants, acc, cfg))
    if "unfreeze2" in variants:
        sec.paragraphs.append(_unfreeze_sentence(variants["unfreeze2"], acc, cfg))
    sec.tables += _geron_transfer(variants, cfg)
    sec.figures += fig(t, "bars", "Transfer variants: test accuracy, mean ± 95 % CI")


def _sources_text(folder: Path) -> str:
    path = folder / "sources" / "result.json"
    if not path.is_file():
        return ""
    s = runs.read_json(path)["summary"]
    return f" (their test accuracy on the source digits: {pm(s['test_acc'])})"


def _transfer_table(variants: dict[str, dict]) -> Table:
    rows = []
    for r in variants.values():
        s = r["summary"]
        rows.append(
            [
                r["label"],
                pm(s["test_precision"]),
                pm(s["test_acc"]),
                f"{s['seconds'][0]:.2f} s",
                f"{s['best_epoch'][0]:.0f}",
                f"{s['epochs_run'][0]:.0f}",
            ]
        )
    return Table(
        [
            "variant",
            "test precision",
            "test accuracy",
            "training time per seed",
            "best epoch",
            "epochs run",
        ],
        rows,
        "mean ± 95 % CI over seeds; seeds train together, time per seed = stack time / seeds",
    )


def _caching_sentence(frozen: dict, cached: dict, acc: dict[str, list[float]]) -> str:
    """A timing ratio, measured once for each variant in the same run: no test, none claimed."""
    ratio = frozen["stack_seconds"] / cached["stack_seconds"]
    same = max(abs(a - b) for a, b in zip(acc["frozen5"], acc["cached5"], strict=True))
    return (
        f"Caching the frozen layers: training took {frozen['stack_seconds']:.2f} s uncached and "
        f"{cached['stack_seconds']:.2f} s cached for all seeds (the one-off feature computation "
        f"included; one timing each, side by side in this run), a time ratio of {ratio:.1f}×; "
        f"per seed the test accuracy differs by at most {amount(same)} from the uncached run "
        "(same seeds, same stopping rule)."
    )


def _helped_sentence(variants: dict[str, dict], acc: dict[str, list[float]], cfg: dict) -> str:
    """Did transfer help? The best variant on validation against training from scratch."""
    others = {v: r for v, r in variants.items() if v != "scratch"}
    best_v = max(others, key=lambda v: others[v]["summary"]["val_acc"][0])
    c = paired(acc[best_v], acc["scratch"])
    label, best = variants[best_v]["label"], pm(others[best_v]["summary"]["test_acc"])
    scratch = pm(variants["scratch"]["summary"]["test_acc"])
    if c.diff > 0 and c.significant:
        return (
            f"Transfer helped: the best variant on validation ({label}) reaches {best} test "
            f"accuracy vs {scratch} from scratch ({qualifier(c)})."
        )
    if c.diff < 0 and c.significant:
        n_train = variants["scratch"]["n_train"]
        return (
            f"Transfer did NOT help here: training the same MLP from scratch on the {n_train} "
            f"images gives {scratch} test accuracy, significantly better than the best transfer "
            f"variant on validation ({label}, {best}; {qualifier(c)}).{_depth_line(acc)}"
        )
    return (
        f"Whether transfer helps is not shown: the best variant on validation ({label}, "
        f"{best}) against {scratch} from scratch — "
        f"{compare(c, label, 'training from scratch')}."
    )


def _depth_line(acc: dict[str, list[float]]) -> str:
    """Whether reusing fewer source layers does better — the measurement behind "the top
    layers are too specific to the source digits", said only when its test is significant."""
    if "reuse4" not in acc or "frozen5" not in acc:
        return ""
    c = paired(acc["reuse4"], acc["frozen5"])
    if c.significant and c.diff > 0:
        return (
            " Reusing four source layers instead of five is better by "
            f"{amount(c.diff)} ({qualifier(c)}): the top source layer is the least reusable."
        )
    return ""


def _unfreeze_sentence(u: dict, acc: dict[str, list[float]], cfg: dict) -> str:
    base, factor = u["base_variant"], cfg["unfreeze_lr_factor"]
    if factor < 1:
        lr_text = f"a {1 / factor:g}× smaller learning rate"
    elif factor > 1:
        lr_text = f"a {factor:g}× larger learning rate"
    else:
        lr_text = "the same learning rate"
    text = (
        f"Unfreezing: the better frozen variant on validation accuracy was {base}; unfreezing "
        f"its top two hidden layers (with {lr_text}) gives {pm(u['summary']['test_acc'])} test "
        "accuracy"
    )
    if base in acc:
        c = paired(acc["unfreeze2"], acc[base])
        text += f"; {compare(c, 'the unfrozen model', base + ' alone')}"
    return text + "."


def _geron_transfer(variants: dict, cfg: dict) -> list[Table]:
    pub = published()["geron_digits"]
    rows = []
    for v, (lo, hi) in pub["transfer"].items():
        if v in variants:
            ours = 100 * variants[v]["summary"]["test_acc"][0]
            rows.append(
                [
                    variants[v]["label"],
                    span(lo, hi),
                    f"{ours:.2f} %",
                    against_range(ours, lo, hi, "Géron"),
                ]
            )
    note = (
        ""
        if cfg["per_digit"] == pub["per_digit"]
        else (f" Géron used {pub['per_digit']} images per digit, this run {cfg['per_digit']}.")
    )
    return published_table(
        ["variant", "published (accuracy)", "this run (accuracy)", "comparison"],
        rows,
        f"Published: {pub['source']}. {pub['note']}{note}",
    )
