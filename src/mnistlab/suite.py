"""``run all``: every study with one profile's settings, resumable, then the report.

``full`` runs the studies as specified; ``quick`` is a demonstration that finishes in a few
minutes on a 2-core CPU (fewer seeds and epochs, test subsets) and is labelled as such on every
page of its report. Each study's results live under its config hash, so a finished study is
loaded, not recomputed, and an interrupted one resumes where its checkpoints left it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnistlab import runs
from mnistlab.progress import Progress
from mnistlab.studies import digits, fewshot, stn, stn_deform

PROFILES = ("quick", "full")


def profile_configs(profile: str, seed: int = 0) -> dict[str, Any]:
    """The config of every study under ``profile``."""
    if profile == "full":
        return {
            "fewshot": fewshot.FewshotConfig(seed=seed),
            "stn": stn.STNConfig(seed=seed),
            "stn-deform": stn_deform.STNDeformConfig(seed=seed),
            "digits": digits.DigitsConfig(seed=seed),
        }
    if profile == "quick":
        return {
            "fewshot": fewshot.FewshotConfig(
                seed=seed, sizes=(10, 30), seeds=2, epochs=40, test_limit=1000
            ),
            "stn": stn.STNConfig(
                seed=seed,
                epochs=3,
                seeds=1,
                limit_train=10_000,
                limit_test=2000,
                train_eval_size=2000,
            ),
            "stn-deform": stn_deform.STNDeformConfig(
                seed=seed, epochs=3, limit_train=10_000, limit_test=2000, train_eval_size=3000
            ),
            "digits": digits.DigitsConfig(
                seed=seed,
                trials=4,
                folds=2,
                tune_max_epochs=6,
                max_epochs=15,
                transfer_seeds=2,
                dropout_rates=(0.1, 0.3),
            ),
        }
    raise ValueError(f"unknown profile {profile!r}")


RUNNERS: dict[str, Callable[..., Any]] = {
    "fewshot": lambda cfg, folder, **kw: fewshot.run(cfg, folder, skip_missing=True, **kw),
    "stn": stn.run,
    "stn-deform": stn_deform.run,
    "digits": digits.run,
}


def summary_line(study: str, metrics: dict[str, Any]) -> str:
    """One line per finished study, from its metrics."""
    if study == "fewshot":
        parts = []
        for name, r in metrics["backbones"].items():
            row = r["table"][0]
            tag = " (random weights)" if r["random_weights"] else ""
            parts.append(
                f"{name}{tag} error@{row['size']}/class {100 * row['lowest_test_error'][0]:.1f}%"
            )
        parts += [f"{n} skipped (no weights)" for n in metrics.get("skipped", {})]
        return "fewshot: " + "; ".join(parts)
    if study == "stn":
        return (
            f"stn: test acc STN {100 * metrics['stn']['final_test_acc'][0]:.2f}% vs CNN "
            f"{100 * metrics['baseline']['final_test_acc'][0]:.2f}%"
        )
    if study == "stn-deform":
        a = metrics["final_test_acc"]
        return (
            f"stn-deform: zoom-out test acc STN {100 * a['stn']['zoom'][0]:.2f}% vs CNN "
            f"{100 * a['baseline']['zoom'][0]:.2f}%; mean θ scale on zoomed "
            f"{metrics['mean_scale_by_kind']['zoom']:.3f}"
        )
    if study == "digits":  # digits.run returns every part's raw results
        t, f, sc = metrics["tune"], metrics["frozen5"]["summary"], metrics["scratch"]["summary"]
        return (
            f"digits: tuned test precision {100 * t['test_precision']:.2f}%; transfer "
            f"frozen5 {100 * f['test_acc'][0]:.1f}% vs scratch {100 * sc['test_acc'][0]:.1f}%"
        )
    return f"{study}: done"


def run_all(
    *,
    profile: str,
    root: Path,
    force: bool,
    seed: int,
    progress: Progress,
    execute: Callable[..., tuple[Path, Any]],
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run the studies of ``profile`` one after another and write ``root/manifest.json``.

    ``execute(study, config, runner, force=…)`` runs one study in its folder (the CLI passes
    one that adds a log file and progress bars).
    """
    from mnistlab.report.build import MANIFEST

    configs = profile_configs(profile, seed)
    manifest: dict[str, Any] = {
        "profile": profile,
        "command": " ".join(["mnistlab", *sys.argv[1:]]) or "mnistlab",
        "folders": {},
        "wall_seconds": {},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    old = root / MANIFEST
    if old.is_file():  # keep the record of wall times from an earlier (interrupted) call
        prev = runs.read_json(old)
        if prev.get("profile") == profile:
            manifest["wall_seconds"] = prev.get("wall_seconds", {})
    for study, config in configs.items():
        if only and study not in only:
            continue
        folder = runs.run_dir(root, study, config)
        was_done = runs.is_complete(folder) and not force
        t0 = time.perf_counter()
        folder, metrics = execute(study, config, RUNNERS[study], force=force)
        if not was_done:
            manifest["wall_seconds"][study] = time.perf_counter() - t0
        manifest["folders"][study] = str(folder.relative_to(root))
        progress.message(
            summary_line(study, metrics) + (" (already finished: loaded)" if was_done else "")
        )
        runs.atomic_write_json(root / MANIFEST, manifest)
    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs.atomic_write_json(root / MANIFEST, manifest)
    return manifest
