"""Figures and the variant table of the digits study, drawn from its result files on disk."""

from __future__ import annotations

from pathlib import Path

from mnistlab import runs
from mnistlab.plotting import plt, save_figure

_ORDER = ("scratch", "frozen5", "cached5", "reuse4", "unfreeze2")


def _curves(ax_loss, ax_acc, history: list[dict], label: str, colour: str) -> None:
    ep = [r["epoch"] for r in history]
    ax_loss.plot(
        ep, [r["train_eval_loss"] for r in history], "--", color=colour, label=f"{label} train"
    )
    ax_loss.plot(ep, [r["val_loss"] for r in history], "-", color=colour, label=f"{label} val")
    ax_acc.plot(
        ep, [r["train_eval_acc"] for r in history], "--", color=colour, label=f"{label} train"
    )
    ax_acc.plot(ep, [r["val_acc"] for r in history], "-", color=colour, label=f"{label} val")


def _learning_curves(
    folder: Path, runs_by_label: dict[str, list[dict]], title: str, target: float | None = None
) -> None:
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, history) in enumerate(runs_by_label.items()):
        _curves(ax_l, ax_a, history, label, colours[i % len(colours)])
    ax_l.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss", yscale="log")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    if target is not None:
        ax_a.axhline(target, color="grey", lw=0.8, ls=":")
    ax_a.legend(fontsize=7)
    save_figure(fig, folder / "curves")


def write_all(out: Path | str) -> None:
    """(Re)draw every figure whose inputs exist; write the transfer table."""
    out = Path(out)
    bn = out / "batchnorm" / "result.json"
    if bn.is_file():
        r = runs.read_json(bn)
        _learning_curves(
            out / "batchnorm",
            {"no BN": r["plain"]["history"], "batch norm": r["batchnorm"]["history"]},
            "batch norm",
            r["target_val_acc"],
        )
    do = out / "dropout" / "result.json"
    if do.is_file():
        r = runs.read_json(do)
        _learning_curves(
            out / "dropout", {f"p={k}": v["history"] for k, v in r["rates"].items()}, "dropout"
        )
    variants = {
        v: runs.read_json(p) for v in _ORDER if (p := out / "transfer" / f"{v}.json").is_file()
    }
    if variants:
        rows = [_table_row(v, r) for v, r in variants.items()]
        runs.atomic_write_csv(out / "transfer" / "table.csv", rows)
        _transfer_bars(out, rows, variants[next(iter(variants))]["n_train"])


def _table_row(v: str, r: dict) -> dict:
    s = r["summary"]
    return {
        "variant": v,
        "label": r["label"],
        "test_precision": s["test_precision"][0],
        "test_precision_ci95": s["test_precision"][1],
        "test_acc": s["test_acc"][0],
        "test_acc_ci95": s["test_acc"][1],
        "seconds": s["seconds"][0],
        "seconds_ci95": s["seconds"][1],
        "best_epoch": s["best_epoch"][0],
        "epochs_run": s["epochs_run"][0],
        "seeds": len(r["seeds"]),
    }


def _transfer_bars(out: Path, rows: list[dict], n_train: int) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(
        range(len(rows)),
        [100 * r["test_acc"] for r in rows],
        yerr=[100 * r["test_acc_ci95"] for r in rows],
        capsize=4,
        color="#4c72b0",
    )
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
    lo = min(100 * (r["test_acc"] - r["test_acc_ci95"]) for r in rows)
    ax.set_ylim(max(0, lo - 5), 100)
    ax.set_ylabel("test accuracy on digits 5–9 (%)")
    ax.set_title(f"Transfer with {n_train} images (mean ± 95% CI over seeds)")
    save_figure(fig, out / "transfer" / "bars")
