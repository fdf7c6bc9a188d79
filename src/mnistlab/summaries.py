"""Each study's one-line summary of a finished run, read from its metrics (the command line
prints it, ``run all`` logs it; torch-free, like the registry that names these)."""

from __future__ import annotations

from typing import Any

from mnistlab.stats import mean_ci_text


def fewshot_line(m: dict[str, Any]) -> str:
    parts = []
    for name, r in m["backbones"].items():
        row = r["table"][0]
        tag = " (random weights)" if r["random_weights"] else ""
        parts.append(
            f"{name}{tag} lowest test error at {row['size']}/class "
            f"{mean_ci_text(row['lowest_test_error'])}"
        )
    parts += [f"{n} skipped (no weights)" for n in m.get("skipped", {})]
    return "; ".join(parts)


def stn_line(m: dict[str, Any]) -> str:
    a, n = m["models"], m["score_epochs"]
    return (
        f"test accuracy (mean of the last {n} epochs) STN "
        f"{mean_ci_text(a['stn']['primary']['all'])}, CNN "
        f"{mean_ci_text(a['baseline']['primary']['all'])}"
    )


def deform_line(m: dict[str, Any]) -> str:
    a, n = m["models"], m["score_epochs"]
    mag = m["magnification"]["per_seed"]
    return (
        f"zoom-out test accuracy (mean of the last {n} epochs) STN "
        f"{mean_ci_text(a['stn']['primary']['zoom'])} vs CNN "
        f"{mean_ci_text(a['baseline']['primary']['zoom'])}; zoomed-out digits magnified "
        f"{sum(mag) / len(mag):.2f}× relative to originals"
    )


def stn_best_line(m: dict[str, Any]) -> str:
    a, mag = m["model"]["primary"], m["magnification"]["per_seed"]
    return (
        f"recipe {m['search']['chosen']}: zoom-out test accuracy {mean_ci_text(a['zoom'])}, "
        f"zoomed-out digits magnified {sum(mag) / len(mag):.2f}× relative to originals"
    )


def paper_line(m: dict[str, Any]) -> str:
    err = {k: {n: 100 * v["test_error"][0] for n, v in r.items()} for k, r in m["results"].items()}
    return "test error CNN / ST-CNN: " + ", ".join(
        f"{k} {err[k]['cnn']:.2f} / {err[k]['st-cnn']:.2f} %" for k in m["distortions"]
    )


def digits_line(m: dict[str, Any]) -> str:  # digits.run returns every part's results
    parts = []
    if "tune" in m:
        parts.append(f"tuned test precision {100 * m['tune']['test_precision']:.2f} %")
    for v in ("frozen5", "scratch"):
        if v in m:
            parts.append(f"{v} {mean_ci_text(m[v]['summary']['test_acc'], digits=1)}")
    return "; ".join(parts)


def fewshot_best_line(m: dict[str, Any]) -> str:
    parts = [
        f"{name} best honest test accuracy at {r['table'][0]['size']}/class "
        f"{mean_ci_text(r['table'][0]['test_acc'])}"
        for name, r in m["backbones"].items()
    ]
    return "; ".join(parts) or "no backbone had weights"


def digits_best_line(m: dict[str, Any]) -> str:
    src, tr = m["source"]["best"], m["transfer"]
    return f"source test precision {100 * src['test_precision']:.2f} %; transfer " + ", ".join(
        f"{v} {mean_ci_text(tr[v]['test_acc'], digits=1)}" for v in tr
    )
