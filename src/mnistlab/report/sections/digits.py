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
    target,
)
from mnistlab.report.verdict import amount, answer, compare, qualifier, signed
from mnistlab.stats import Comparison, compare_correct, mean_ci, paired


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


def _mcnemar(a: dict, b: dict) -> Comparison:
    """Two single models of part 1 on the same test images."""
    return compare_correct(a["test_correct"], b["test_correct"], a["test_n"])


def _reach(r: dict) -> str:
    e = r["epochs_to_target"]
    return f"{e} epoch(s)" if e is not None else "never"


def _faster(b: dict, p: dict, goal: float) -> str:
    """Converging faster is a count of epochs, not a significance question: say so."""
    inf = 10**9
    eb, ep = b["epochs_to_target"] or inf, p["epochs_to_target"] or inf
    answer_ = "the same number of epochs" if eb == ep else "Yes" if eb < ep else "No"
    return (
        f"{answer_}, judged by the epochs each needed to reach {pct(goal, 0)} validation "
        f"accuracy ({_reach(b)} with batch norm vs {_reach(p)} without; one training run each)"
    )


def _batchnorm(sec: Section, bn: dict, folder: Path) -> None:
    p, b, goal = bn["plain"], bn["batchnorm"], bn["target_val_acc"]
    c = _mcnemar(b, p)
    sec.paragraphs.append(
        f"Batch norm: reached {pct(goal, 0)} validation accuracy in {_reach(b)} vs {_reach(p)} "
        f"without; best validation loss at epoch {b['best_epoch']} vs {p['best_epoch']}; test "
        f"precision {pct(b['test_precision'])} vs {pct(p['test_precision'])}. Converges faster? "
        f"{_faster(b, p, goal)}. Better model? {answer(c)}: on test accuracy "
        f"{compare(c, 'the model with batch norm', 'the one without')}. Epochs are not free: "
        f"{b['seconds'] / max(b['epochs_run'], 1):.2f} s per epoch with batch norm vs "
        f"{p['seconds'] / max(p['epochs_run'], 1):.2f} s without."
    )
    sec.figures += fig(
        folder / "batchnorm",
        "curves",
        "Learning curves with and without batch norm (dashed: train)",
    )


def _dropout(sec: Section, do: dict, folder: Path) -> None:
    rates = do["rates"]
    base = rates["0.0"]
    # chosen on validation (best-epoch validation accuracy; ties go to the smaller rate)
    chosen, best = max(rates.items(), key=lambda kv: (kv[1]["val_acc_at_best"], -float(kv[0])))
    sec.paragraphs.append(
        f"Overfitting: at its best epoch the tuned model without dropout has a train–validation "
        f"accuracy gap of {100 * base['gap_acc_at_best']:.2f} points (loss gap "
        f"{base['gap_loss_at_best']:.4f})."
    )
    sec.tables.append(
        Table(
            [
                "dropout",
                "train−val acc gap",
                "val−train loss gap",
                "val acc at best epoch",
                "test precision",
                "best epoch",
            ],
            [
                [
                    r,
                    pct(v["gap_acc_at_best"]),
                    f"{v['gap_loss_at_best']:.4f}",
                    pct(v["val_acc_at_best"]),
                    pct(v["test_precision"]),
                    str(v["best_epoch"]),
                ]
                for r, v in rates.items()
            ],
            "the rate is chosen on validation accuracy; test precision is reported, not used",
        )
    )
    sec.figures += fig(folder / "dropout", "curves", "Learning curves per dropout rate")
    if chosen == "0.0":
        sec.paragraphs.append(
            "Does dropout help? Not on validation: no rate reached a higher validation accuracy "
            "than the model without dropout (a choice on validation data, no significance "
            f"test), so the chosen model is the one without (test precision "
            f"{pct(base['test_precision'])})."
        )
        return
    c = _mcnemar(best, base)
    sec.paragraphs.append(
        f"Does dropout help? {answer(c)}: validation chose dropout {chosen}; its test precision "
        f"is {pct(best['test_precision'])} vs {pct(base['test_precision'])} without; on test "
        f"accuracy {compare(c, f'dropout {chosen}', 'no dropout')}. Its "
        f"train–validation gap is {100 * best['gap_acc_at_best']:.2f} points, and it takes "
        f"{best['best_epoch']} epochs to its best instead of {base['best_epoch']}."
    )


def _geron_source(pre, tune, bn, do) -> list[Table]:
    pub = published()["geron_digits"]["source_task"]
    rows = []
    ours = {
        "baseline": pre and pre["test_acc"],
        "tuned": tune and tune["test_acc"],
        "batch norm": bn and bn["batchnorm"]["test_acc"],
        "dropout": do
        and max(do["rates"].items(), key=lambda kv: (kv[1]["val_acc_at_best"], -float(kv[0])))[1][
            "test_acc"
        ],
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
        f"variant. Source model: {any_v['source_model']} (the tuned model without batch norm). "
        "One stopping rule for every variant: early stopping on validation loss, best weights "
        "restored."
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
            f"variant on validation ({label}, {best}; {qualifier(c)}). Plausibly the top layers "
            f"of a {cfg['source_digits']} classifier are too specific to it to serve "
            f"{cfg['target_digits']}."
        )
    return (
        f"Whether transfer helps is not shown: the best variant on validation ({label}, "
        f"{best}) against {scratch} from scratch — "
        f"{compare(c, label, 'training from scratch')}."
    )


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


def digits_best(folder: Path | None, baseline: Path | None = None) -> Section:
    sec, m, cfg = opening("digits-best", folder)
    if m is None:
        return sec
    _best_source(sec, m, cfg, baseline)
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
