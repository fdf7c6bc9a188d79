"""One function per study: its result files on disk → a :class:`Section` of generated prose,
figures and tables. Every sentence is formatted from measured numbers; where a measurement
contradicts the textbook expectation, the sentence says so."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab import runs


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    missing: str | None = None  # why the section has no results


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f} %"


def pm(pair: list | tuple, scale: float = 100, digits: int = 2, unit: str = " %") -> str:
    """``[mean, ci]`` → ``"m ± ci %"``."""
    return f"{scale * pair[0]:.{digits}f} ± {scale * pair[1]:.{digits}f}{unit}"


def _fig(folder: Path, stem: str, caption: str) -> list[tuple[Path, str]]:
    path = folder / f"{stem}.png"
    return [(path, caption)] if path.is_file() else []


# ----------------------------------------------------------------------------------- fewshot


def fewshot(folder: Path | None) -> Section:
    sec = Section("fewshot", "1. Few-shot ImageNet transfer (ResNet-50, VGG-19)")
    if folder is None:
        sec.missing = "no finished few-shot run found (mnistlab run fewshot)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    cfg = runs.read_json(folder / "config.json")["config"]
    sec.paragraphs.append(
        f"Output layer replaced by a fresh 10-way linear layer, everything else frozen (eval "
        f"mode); MNIST upscaled bilinearly to {cfg['image_size']}×{cfg['image_size']}, grey "
        f"repeated to 3 channels, ImageNet normalisation. Adam, lr {cfg['lr']:g}, batch "
        f"{cfg['batch_size']}, {cfg['epochs']} epochs, {cfg['seeds']} seeds (each a different "
        f"balanced draw, nested across sizes); test accuracy after every epoch."
    )
    rows = []
    for name, r in m["backbones"].items():
        tag = " — RANDOM WEIGHTS, not ImageNet" if r["random_weights"] else ""
        first, last = r["table"][0], r["table"][-1]
        sec.paragraphs.append(
            f"{name}{tag}: the lowest test error at {first['size']} images per class is "
            f"{pm(first['lowest_test_error'])}, and at {last['size']} per class "
            f"{pm(last['lowest_test_error'])} (best test accuracy reached after "
            f"{first['epochs_to_best'][0]:.0f} and {last['epochs_to_best'][0]:.0f} epochs on "
            f"average; within half a point of the best after "
            f"{first.get('epochs_to_near_best', [float('nan')])[0]:.0f} and "
            f"{last.get('epochs_to_near_best', [float('nan')])[0]:.0f} epochs — the exact best "
            f"epoch on a plateau is mostly noise). Weights: {r['weights_source']}; features in "
            f"{r['precision']} on "
            f"{r['device']}, {r['n_test']} test images."
        )
        flatter = [row["best_test_acc"][0] - row["val_selected_test_acc"][0] for row in r["table"]]
        mean_flatter = sum(flatter) / len(flatter)
        sec.paragraphs.append(
            f"{name}: choosing the epoch on the test set flatters the result by "
            f"{100 * mean_flatter:.2f} points on average against the honest protocol (lr and "
            f"epoch chosen on a {cfg['val_per_class']}-per-class validation split)."
        )
        for row in r["table"]:
            rows.append(
                [
                    name + (" (random)" if r["random_weights"] else ""),
                    str(row["size"]),
                    pm(row["best_test_acc"]),
                    pm(row["lowest_test_error"]),
                    pm(row["epochs_to_best"], 1, 1, ""),
                    pm(row.get("epochs_to_near_best", [float("nan"), 0]), 1, 1, ""),
                    pm(row["val_selected_test_acc"]),
                ]
            )
    for name, reason in m.get("skipped", {}).items():
        sec.bullets.append(f"{name} SKIPPED: {reason}")
    sec.tables.append(
        Table(
            [
                "backbone",
                "images/class",
                "best test acc",
                "lowest test error",
                "epochs to best",
                "epochs to within 0.5 pt",
                "val-selected test acc",
            ],
            rows,
            "mean ± 95 % CI over seeds",
        )
    )
    sec.figures += _fig(folder, "error_vs_size", "Lowest test error vs training-set size")
    sec.figures += _fig(folder, "epochs_vs_size", "Epochs to best test accuracy vs size")
    for name in m["backbones"]:
        sec.figures += _fig(folder, f"curves_{name}", f"{name}: test accuracy per epoch")
    return sec


# ----------------------------------------------------------------------------------- STN


def stn(folder: Path | None) -> Section:
    sec = Section("stn", "2. Spatial transformer network on MNIST")
    if folder is None:
        sec.missing = "no finished STN run found (mnistlab run stn)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    s, b = m["stn"], m["baseline"]
    n = len(s["per_seed_final"])
    diff = s["final_test_acc"][0] - b["final_test_acc"][0]
    overlap = abs(diff) < s["final_test_acc"][1] + b["final_test_acc"][1]
    verdict = ("beats" if diff > 0 else "does not beat") + " the same CNN without it"
    sec.paragraphs.append(
        f"Final test accuracy after {len(_history(folder, 'stn'))} epochs, {n} seed(s): STN "
        f"{pm(s['final_test_acc'])}, plain CNN {pm(b['final_test_acc'])} — the STN {verdict} "
        f"by {100 * diff:+.2f} points"
        + (" (within the seed-to-seed spread: not a significant difference)." if overlap else ".")
        + f" Best epoch accuracy: STN {pm(s['best_test_acc'])}, CNN {pm(b['best_test_acc'])}."
    )
    sec.paragraphs.append(
        f"Padding: {m['padding']} — the tutorial pads with 0 after "
        "normalising, while the normalised background is about −0.42."
    )
    sec.paragraphs.append(
        "Deformations the STN applies to the test images (θ decomposed into "
        "rotation · shear · scale, plus translation; a type counts as used when "
        "its 90th-percentile deviation from identity exceeds the threshold):"
    )
    sec.bullets += describe_deformations(m["deformations"])
    sec.figures += _fig(folder, "accuracy_curves", "Train (dashed) and test accuracy per epoch")
    sec.figures += _fig(folder, "theta_hist", "Distribution of θ components on the test set")
    sec.figures += _fig(
        folder,
        "theta_examples",
        "Test images with the largest rotation, zoom, shear and translation: input | STN output",
    )
    return sec


_UNIT = {"rotation": "°"}


def describe_deformations(stats: dict[str, dict[str, float]]) -> list[str]:
    """One line per deformation type: used or not (from the stored θ statistics), magnitudes.

    θ maps output to input coordinates, so a mean θ scale s < 1 magnifies (zoom-in by 1/s)
    and s > 1 shrinks the digit (zoom-out by s)."""
    lines = []
    for name, s in stats.items():
        unit = _UNIT.get(name, "")
        verdict = "used" if s["learned"] else "not used"
        line = (
            f"{name}: {verdict} — median |deviation| {s['median']:.3g}{unit}, "
            f"90th percentile {s['p90']:.3g}{unit} (threshold {s['threshold']:g})"
        )
        if name == "zoom":
            scale = s["mean_scale"]
            kind = f"zoom-in of {1 / scale:.2f}×" if scale < 1 else f"zoom-out of {scale:.2f}×"
            line += f"; mean θ scale {scale:.3f}, on average a {kind}"
        if name == "rotation" and "mean_signed_deg" in s:
            mean = s["mean_signed_deg"]
            line += f"; mean signed angle {mean:+.1f}°"
            if abs(mean) > 0.7 * s["median"]:  # nearly every image turned the same way
                line += (
                    " — mostly one constant rotation applied to every digit (a global "
                    "offset the classifier adapts to), not a per-image correction"
                )
        lines.append(line)
    return lines


def _history(folder: Path, name: str) -> list[dict[str, str]]:
    files = sorted(folder.glob(f"history_{name}_seed*.csv"))
    return runs.read_csv(files[0]) if files else []


def stn_deform(folder: Path | None) -> Section:
    sec = Section("stn_deform", "3. STN on MNIST + elastic + 4× zoom-out copies (180k)")
    if folder is None:
        sec.missing = "no finished stn-deform run found (mnistlab run stn-deform)"
        return sec
    m = runs.read_json(folder / "metrics.json")
    sec.paragraphs.append(
        f"Training set {m['n_train']:,} images, test set {m['n_test']:,} (originals, one "
        f"elastic and one 4× zoom-out copy of each); the deformed copies took "
        f"{m['expand_seconds']:.1f} s to build (or load from cache)."
    )
    cfg = runs.read_json(folder / "config.json")["config"]
    acc = {
        model: {k: v[0] for k, v in m["final_test_acc"][model].items()}
        for model in ("stn", "baseline")
    }
    sec.bullets += explain_deform(
        m["mean_scale_by_kind"], acc, m.get("zoom_factor", cfg.get("zoom_factor", 4.0))
    )
    rows = []
    for model in ("stn", "baseline"):
        te, tr = m["final_test_acc"][model], m["final_train_acc"][model]
        for kind in ("all", "original", "elastic", "zoom"):
            rows.append([model, kind, pm(tr[kind]), pm(te[kind])])
    sec.tables.append(
        Table(
            ["model", "kind", "train acc (final)", "test acc (final)"],
            rows,
            "eval-mode accuracy after the last epoch",
        )
    )
    sec.tables.append(
        Table(
            ["kind", "mean θ scale √|det A|"],
            [[k, f"{v:.3f}"] for k, v in m["mean_scale_by_kind"].items()],
            "1.0 = no zoom; 0.25 would undo a 4× zoom-out",
        )
    )
    sec.figures += _fig(folder, "accuracy_curves", "Train (dashed) / test accuracy per kind")
    sec.figures += _fig(
        folder,
        "deform_examples",
        "Zoomed-out, elastic and original test images: input | STN output",
    )
    sec.figures += _fig(folder, "scale_by_kind", "θ scale per input kind")
    return sec


def explain_deform(
    scale: dict[str, float], acc: dict[str, dict[str, float]], zoom: float
) -> list[str]:
    """Plain-language findings generated from the measured scales and accuracies."""
    lines = []
    s_o, s_z, s_e = scale["original"], scale["zoom"], scale["elastic"]
    rel = s_z / s_o if s_o else float("nan")
    ideal = 1 / zoom
    if rel <= 0.5 * (1 + ideal):  # at least half-way from "no change" (1) to full undo (1/zoom)
        verdict = "learned to undo much of the zoom-out"
    elif rel < 0.9:
        verdict = "learned to undo part of the zoom-out"
    else:
        verdict = "did not learn to undo the zoom-out"
    lines.append(
        f"Zoom-out: the STN {verdict}. Its mean θ scale is {s_z:.3f} on zoomed-out test images "
        f"vs {s_o:.3f} on originals (ratio {rel:.2f}; a full undo of a {zoom:g}× zoom-out "
        f"would need a ratio of {ideal:.2f}). The output is magnified {1 / rel:.2f}× relative to "
        f"originals, not {zoom:g}×."
    )
    stn, base = acc["stn"], acc["baseline"]
    if stn["zoom"] < base["zoom"] and rel < 0.9:
        lines.append(
            "Magnifying the zoomed-out digits did not pay off: on them the STN is less accurate "
            "than the same CNN without it — contrary to the expectation that a transformer helps "
            "most on the deformation it learned to undo (plausibly because a 7×7-pixel digit has "
            "lost detail that resampling cannot restore)."
        )
    for kind in ("zoom", "elastic", "original"):
        diff = 100 * (stn[kind] - base[kind])
        word = "better" if diff > 0 else "worse"
        lines.append(
            f"Accuracy on {kind} test images: {100 * stn[kind]:.2f} % with the STN vs "
            f"{100 * base[kind]:.2f} % without ({abs(diff):.2f} points {word})."
        )
    lines.append(
        f"Elastic: the STN's mean θ scale on elastic images is {s_e:.3f} (originals {s_o:.3f}). "
        "An affine transformer applies one global rotation/scale/shear/shift per image; the "
        "random-grid elastic warp bends strokes locally in different directions, which no "
        "single affine map can undo — at most the STN re-centres or rescales the digit."
    )
    return lines


# ----------------------------------------------------------------------------------- digits


def digits(folder: Path | None) -> list[Section]:
    sec = Section("digits", "4. Digits 0–4: the 5×100 MLP, tuning, batch norm, dropout")
    sec2 = Section("transfer", "5. Transfer 0–4 → 5–9 with 100 images per digit")
    if folder is None:
        sec.missing = sec2.missing = "no finished digits run found (mnistlab run digits)"
        return [sec, sec2]
    read = lambda p: runs.read_json(folder / p) if (folder / p).is_file() else None  # noqa: E731
    pre, tune, bn, do = (
        read("pretrain/result.json"),
        read("tune/result.json"),
        read("batchnorm/result.json"),
        read("dropout/result.json"),
    )
    if pre:
        sec.paragraphs.append(
            f"Baseline 5×100 ReLU MLP (Xavier init, Adam lr {pre['hyperparameters']['lr']:g}, "
            f"L2 {pre['hyperparameters']['l2']:g} as Adam's coupled weight decay on weight "
            f"matrices, early stopping on validation loss): best epoch {pre['best_epoch']}, test "
            f"precision {pct(pre['test_precision'])}, accuracy {pct(pre['test_acc'])}. "
            f"Checkpoints: {', '.join(pre['checkpoints'])}."
        )
    if tune:
        bst = tune["best"]
        sec.paragraphs.append(
            f"Cross-validated tuning ({tune['folds']}-fold stratified, Optuna TPE, "
            f"{tune['n_trials']} trials of which {tune['n_pruned']} pruned): best lr "
            f"{bst['lr']:.3g}, L2 {bst['l2']:.3g}, batch {bst['batch_size']}; CV accuracy "
            f"{pct(tune['cv_mean_acc'])} ± {pct(tune['cv_sd_acc'])} (sd). Retrained on the whole "
            f"0–4 training set for {tune['retrain_epochs']} epochs: test precision "
            f"{pct(tune['test_precision'])}, accuracy {pct(tune['test_acc'])}."
        )
    if bn:
        _batchnorm(sec, bn, folder)
    if do:
        _dropout(sec, do, folder)
    _transfer(sec2, folder)
    if not sec2.paragraphs:
        sec2.missing = "the transfer parts have not run (mnistlab run digits --part transfer)"
    return [sec, sec2]


def _batchnorm(sec: Section, bn: dict, folder: Path) -> None:
    p, b, target = bn["plain"], bn["batchnorm"], bn["target_val_acc"]

    def reach(r):
        e = r["epochs_to_target"]
        return f"{e} epoch(s)" if e is not None else "never"

    faster = (b["epochs_to_target"] or 10**9) < (p["epochs_to_target"] or 10**9)
    same = b["epochs_to_target"] == p["epochs_to_target"]
    better = b["test_precision"] > p["test_precision"]
    sec.paragraphs.append(
        f"Batch norm: reached {pct(target, 0)} validation accuracy in {reach(b)} vs {reach(p)} "
        f"without; best validation loss at epoch {b['best_epoch']} vs {p['best_epoch']}; test "
        f"precision {pct(b['test_precision'])} vs {pct(p['test_precision'])}. Converges faster? "
        + ("Same epoch count." if same else ("Yes." if faster else "No."))
        + " Better model? "
        + (
            f"Yes, by {100 * (b['test_precision'] - p['test_precision']):.2f} points."
            if better
            else "No — the model without batch norm is at least as precise."
        )
        + f" (Epochs are not free: {b['seconds'] / max(b['epochs_run'], 1):.2f} s per epoch with "
        f"batch norm vs {p['seconds'] / max(p['epochs_run'], 1):.2f} s without.)"
    )
    sec.figures += _fig(
        folder / "batchnorm",
        "curves",
        "Learning curves with and without batch norm (dashed: train)",
    )


def _dropout(sec: Section, do: dict, folder: Path) -> None:
    rates = do["rates"]
    base = rates["0.0"]
    best_rate, best = max(rates.items(), key=lambda kv: kv[1]["test_precision"])
    sec.paragraphs.append(
        f"Overfitting: at its best epoch the tuned model without dropout has a train–validation "
        f"accuracy gap of {100 * base['gap_acc_at_best']:.2f} points (loss gap "
        f"{base['gap_loss_at_best']:.4f})."
    )
    rows = [
        [
            r,
            pct(v["gap_acc_at_best"]),
            f"{v['gap_loss_at_best']:.4f}",
            pct(v["best_val_acc"]),
            pct(v["test_precision"]),
            str(v["best_epoch"]),
        ]
        for r, v in rates.items()
    ]
    sec.tables.append(
        Table(
            [
                "dropout",
                "train−val acc gap",
                "val−train loss gap",
                "best val acc",
                "test precision",
                "best epoch",
            ],
            rows,
        )
    )
    if best_rate == "0.0":
        sec.paragraphs.append(
            "Does dropout help? No: no rate beat the model without dropout "
            f"on test precision ({pct(base['test_precision'])})."
        )
    else:
        sec.paragraphs.append(
            f"Does dropout help? Yes: dropout {best_rate} gives test precision "
            f"{pct(best['test_precision'])} vs {pct(base['test_precision'])} without "
            f"(+{100 * (best['test_precision'] - base['test_precision']):.2f} points), and "
            f"a train–validation gap of {100 * best['gap_acc_at_best']:.2f} points — it takes "
            f"{best['best_epoch']} epochs to its best instead of {base['best_epoch']}."
        )
    sec.figures += _fig(folder / "dropout", "curves", "Learning curves per dropout rate")


def _transfer(sec: Section, folder: Path) -> None:
    t = folder / "transfer"
    variants = {p.stem: runs.read_json(p) for p in sorted(t.glob("*.json"))}
    if not variants:
        return
    rows = []
    for v in ("scratch", "frozen5", "cached5", "reuse4", "unfreeze2"):
        if v in variants:
            s = variants[v]["summary"]
            rows.append(
                [
                    variants[v]["label"],
                    pm(s["test_precision"]),
                    pm(s["test_acc"]),
                    pm(s["seconds"], 1, 2, " s"),
                    f"{s['best_epoch'][0]:.0f}",
                    f"{s['epochs_run'][0]:.0f}",
                ]
            )
    any_v = next(iter(variants.values()))
    sec.paragraphs.append(
        f"Transfer to digits 5–9 with {any_v['n_train']} training images (100 per digit), "
        f"{any_v['n_val']} validation and {any_v['n_test']} test images; "
        f"{len(any_v['seeds'])} seeds (each a different draw). Source model: "
        f"{any_v['source_model']} (the tuned model without batch norm). The same stopping rule "
        f"for every variant: early stopping on validation loss."
    )
    sec.tables.append(
        Table(
            [
                "variant",
                "test precision",
                "test accuracy",
                "training time",
                "best epoch",
                "epochs run",
            ],
            rows,
            "mean ± 95 % CI over seeds",
        )
    )
    if "frozen5" in variants and "cached5" in variants:
        f, c = variants["frozen5"], variants["cached5"]
        ratio = f["summary"]["seconds"][0] / c["summary"]["seconds"][0]
        same = max(
            abs(a["test_acc"] - b["test_acc"]) for a, b in zip(f["seeds"], c["seeds"], strict=True)
        )
        sec.paragraphs.append(
            f"Caching the frozen layers made training {ratio:.1f}× faster "
            f"({f['summary']['seconds'][0]:.2f} s → {c['summary']['seconds'][0]:.2f} s per seed, "
            f"the one-off feature computation included); per seed the test accuracy differs by at "
            f"most {100 * same:.2f} points from the uncached run (same seeds, same stopping rule)."
        )
    if "scratch" in variants:
        scratch = variants["scratch"]["summary"]["test_acc"]
        others = {v: variants[v]["summary"]["test_acc"] for v in variants if v != "scratch"}
        if others:
            best_v, best = max(others.items(), key=lambda kv: kv[1][0])
            label = variants[best_v]["label"]
            if best[0] > scratch[0]:
                verdict = (
                    f"Transfer helped: the best variant ({label}) reaches "
                    f"{pm(best)} test accuracy vs {pm(scratch)} from scratch."
                )
            else:
                verdict = (
                    f"Transfer did NOT help here: training the same MLP from scratch on "
                    f"the 500 images gives {pm(scratch)} test accuracy, better than every "
                    f"transfer variant (best: {label}, {pm(best)}). The top layers of a "
                    f"0–4 classifier are too specific to 0–4 to serve 5–9."
                )
            sec.paragraphs.append(verdict)
    if "unfreeze2" in variants:
        u = variants["unfreeze2"]
        sec.paragraphs.append(
            f"Unfreezing: the best frozen variant on validation accuracy was {u['base_variant']}; "
            f"unfreezing its top two hidden layers (with a 10× smaller learning rate) gives "
            f"{pm(u['summary']['test_acc'])} test accuracy."
        )
    sec.figures += _fig(t, "bars", "Transfer variants: test accuracy, mean ± 95 % CI")


def environment(manifest: dict[str, Any] | None, folders: dict[str, Path | None]) -> Section:
    sec = Section("environment", "Environment and provenance")
    rows = []
    for study, folder in folders.items():
        if folder is None:
            rows.append([study, "—", "—", "—", "—"])
            continue
        cfg = runs.read_json(folder / "config.json")
        m = runs.read_json(folder / "metrics.json")
        env = cfg.get("environment", {})
        wall = (manifest or {}).get("wall_seconds", {}).get(study, m.get("wall_seconds"))
        rows.append(
            [
                study,
                str(folder),
                f"seed {cfg.get('seed')}",
                f"{wall:.0f} s" if isinstance(wall, int | float) else "—",
                f"torch {env.get('torch')}, {cfg.get('device', 'cpu')}, "
                f"{env.get('cpu_count')} CPUs, {env.get('cuda') or 'no GPU'}",
            ]
        )
    sec.tables.append(Table(["study", "results folder", "seed", "wall time", "environment"], rows))
    any_cfg = next((runs.read_json(f / "config.json") for f in folders.values() if f), None)
    if any_cfg:
        env = any_cfg["environment"]
        sec.bullets.append(
            f"Python {env.get('python')}, numpy {env.get('numpy')}, torch "
            f"{env.get('torch')}, mnistlab {env.get('mnistlab')}; "
            f"{env.get('platform')}"
        )
    if any_cfg and "data" in any_cfg:
        sec.bullets.append(
            f"MNIST source: {any_cfg['data']['source']} ({any_cfg['data']['location']})"
        )
        for name, digest in any_cfg["data"]["sha256"].items():
            sec.bullets.append(f"MNIST {name}: SHA-256 {digest} (verified at load)")
    fs = folders.get("fewshot")
    if fs is not None:
        m = runs.read_json(fs / "metrics.json")
        for name, r in m["backbones"].items():
            flag = "RANDOM (not ImageNet)" if r["random_weights"] else "ImageNet"
            sec.bullets.append(
                f"{name} weights: {flag} — {r['weights_source']}, digest "
                f"{r['weights_digest'][:16]}…"
            )
        for name, reason in m.get("skipped", {}).items():
            sec.bullets.append(f"{name} weights: MISSING — skipped. {reason}")
    if manifest:
        sec.bullets.append(
            f"Profile: {manifest.get('profile')}; command: "
            f"{manifest.get('command')}; finished {manifest.get('finished')}"
        )
    return sec
