"""The studies by name, their profiles, and ``run all``.

:data:`STUDIES` is the registry the command line is built from (each study's config class,
run function and the few options that are not config fields). ``full`` runs the studies as
specified; ``quick`` is a demonstration that finishes in a few minutes on a 2-core CPU (fewer
seeds and epochs, test subsets) and is labelled as such on every page of its report. Each
study's results live under its config hash, so a finished study is loaded, not recomputed, and
an interrupted one resumes where its checkpoints left it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistlab import runs
from mnistlab.errors import MnistlabError
from mnistlab.progress import Progress
from mnistlab.studies import digits, digits_best, fewshot, fewshot_best, stn, stn_deform

PROFILES = ("quick", "full")
MANIFEST = runs.MANIFEST


@dataclass(frozen=True)
class StudySpec:
    config: type
    run: Callable[..., dict]
    help: str
    extra_options: Callable[[argparse.ArgumentParser], None] | None = None
    fixed_from_args: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    run_kwargs: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}


def _fewshot_options(p: argparse.ArgumentParser) -> None:
    from mnistlab.models.backbones import BACKBONES

    p.add_argument(
        "--backbone",
        action="append",
        dest="backbones",
        choices=list(BACKBONES),
        help="repeatable (default: resnet50 and vgg19)",
    )
    p.add_argument(
        "--weights",
        action="append",
        dest="weights_specs",
        metavar="[NAME=]PATH|random",
        help="state-dict file, or 'random' (labelled as such everywhere)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="re-run the backbone every epoch (the tutorial's way; slow)",
    )


def weights_overrides(values: list[str] | None, backbones: tuple[str, ...]) -> tuple:
    """``--weights X`` (one backbone, or ``random``) or ``--weights NAME=X`` (repeatable)."""
    from mnistlab.models.backbones import BACKBONES

    pairs = []
    for value in values or []:
        name, sep, spec = value.partition("=")
        if sep and name in BACKBONES:
            pairs.append((name, spec))
        elif value == "random":
            pairs.append(("*", "random"))
        elif len(backbones) == 1:
            pairs.append((backbones[0], value))
        else:
            raise MnistlabError(
                f"--weights {value!r} is ambiguous with several backbones; write NAME=PATH"
            )
    return tuple(pairs)


def _fewshot_fixed(args: argparse.Namespace) -> dict[str, Any]:
    backbones = tuple(args.backbones or fewshot.FewshotConfig.backbones)
    fixed = {
        "backbones": backbones,
        "weights": weights_overrides(args.weights_specs, backbones),
        "cache": not args.no_cache,
    }
    for _, spec in fixed["weights"]:
        if spec != "random" and not Path(spec).is_file():
            raise MnistlabError(f"weights file {spec} does not exist")
    return fixed


def _digits_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--part",
        action="append",
        choices=list(digits.PARTS),
        help="run only this part (repeatable; dependencies run as needed; default: all)",
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="a shared Optuna database for the tuning, e.g. postgresql+psycopg://user@host/db "
        "(several processes share its trials; default: SQLite in the run folder)",
    )


STUDIES: dict[str, StudySpec] = {
    "fewshot": StudySpec(
        fewshot.FewshotConfig,
        fewshot.run,
        "few-shot transfer: new 10-way layer on frozen ImageNet nets",
        _fewshot_options,
        _fewshot_fixed,
    ),
    "stn": StudySpec(
        stn.STNConfig, stn.run, "spatial transformer vs plain CNN on MNIST; what it learns"
    ),
    "stn-deform": StudySpec(
        stn_deform.STNDeformConfig,
        stn_deform.run,
        "STN on MNIST + elastic + zoom-out copies (60k → 180k)",
    ),
    "digits": StudySpec(
        digits.DigitsConfig,
        digits.run,
        "MLP on digits 0–4, tuning, BN, dropout, transfer to 5–9",
        _digits_options,
        run_kwargs=lambda args: {
            "parts": tuple(args.part or digits.PARTS),
            "storage": args.storage,
        },
    ),
    "fewshot-best": StudySpec(
        fewshot_best.FewshotBestConfig,
        fewshot_best.run,
        "few-shot: the best honest head (chosen on validation) on the same frozen features",
        _fewshot_options,
        _fewshot_fixed,
    ),
    "digits-best": StudySpec(
        digits_best.DigitsBestConfig,
        digits_best.run,
        "digits: wider cross-validated search and validation-chosen transfer recipes",
    ),
}
PROTOCOLS = {
    "specified": ("fewshot", "stn", "stn-deform", "digits"),
    "best": ("fewshot-best", "digits-best"),
}
PROTOCOLS["both"] = PROTOCOLS["specified"] + PROTOCOLS["best"]


def profile_configs(
    profile: str, seed: int = 0, device: str = "auto", protocol: str = "both"
) -> dict[str, Any]:
    """The config of every study under ``profile`` (and ``protocol``)."""
    configs = _profile(profile, {"seed": seed, "device": device})
    return {k: v for k, v in configs.items() if k in PROTOCOLS[protocol]}


def _profile(profile: str, common: dict[str, Any]) -> dict[str, Any]:
    if profile == "full":
        return {
            "fewshot": fewshot.FewshotConfig(**common),
            "stn": stn.STNConfig(**common),
            "stn-deform": stn_deform.STNDeformConfig(**common),
            "digits": digits.DigitsConfig(**common),
            "fewshot-best": fewshot_best.FewshotBestConfig(**common),
            "digits-best": digits_best.DigitsBestConfig(**common),
        }
    if profile == "quick":
        quick_fewshot = {"sizes": (10, 30), "seeds": 2, "epochs": 40, "test_limit": 1000}
        quick_digits = {
            "trials": 4,
            "folds": 2,
            "tune_max_epochs": 6,
            "max_epochs": 15,
            "transfer_seeds": 2,
            "dropout_rates": (0.1, 0.3),
        }
        return {
            "fewshot": fewshot.FewshotConfig(**common, **quick_fewshot),
            "stn": stn.STNConfig(
                **common,
                epochs=3,
                seeds=1,
                limit_train=10_000,
                limit_test=2000,
                train_eval_size=2000,
            ),
            "stn-deform": stn_deform.STNDeformConfig(
                **common, epochs=3, limit_train=10_000, limit_test=2000, train_eval_size=3000
            ),
            "digits": digits.DigitsConfig(**common, **quick_digits),
            "fewshot-best": fewshot_best.FewshotBestConfig(**common, **quick_fewshot),
            "digits-best": digits_best.DigitsBestConfig(
                **common,
                **quick_digits,
                best_trials=4,
                best_max_epochs=6,
                head_lrs=(1e-2,),
                head_l2s=(0.0,),
                unfreeze_factors=(0.1, 1.0),
            ),
        }
    raise MnistlabError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")


RUNNERS: dict[str, Callable[..., Any]] = {
    "fewshot": lambda cfg, folder, **kw: fewshot.run(cfg, folder, skip_missing=True, **kw),
    "stn": stn.run,
    "stn-deform": stn_deform.run,
    "digits": digits.run,
    "fewshot-best": lambda cfg, f, **kw: fewshot_best.run(cfg, f, skip_missing=True, **kw),
    "digits-best": digits_best.run,
}


def summary_line(study: str, metrics: dict[str, Any]) -> str:
    """One line per finished study, from its metrics."""
    if study == "fewshot":
        parts = []
        for name, r in metrics["backbones"].items():
            row = r["table"][0]
            tag = " (random weights)" if r["random_weights"] else ""
            err = row["lowest_test_error"]
            parts.append(
                f"{name}{tag} lowest test error at {row['size']}/class "
                f"{100 * err[0]:.2f} ± {100 * err[1]:.2f} %"
            )
        parts += [f"{n} skipped (no weights)" for n in metrics.get("skipped", {})]
        return "fewshot: " + "; ".join(parts)
    if study == "stn":
        s, b = metrics["stn"]["final_test_acc"], metrics["baseline"]["final_test_acc"]
        return (
            f"stn: final test accuracy STN {100 * s[0]:.2f} ± {100 * s[1]:.2f} %, "
            f"CNN {100 * b[0]:.2f} ± {100 * b[1]:.2f} %"
        )
    if study == "stn-deform":
        a = metrics["final_test_acc"]
        return (
            f"stn-deform: zoom-out test accuracy STN {100 * a['stn']['zoom'][0]:.2f} % vs CNN "
            f"{100 * a['baseline']['zoom'][0]:.2f} %; mean θ scale on zoomed "
            f"{metrics['mean_scale_by_kind']['zoom']:.3f}"
        )
    if study == "fewshot-best":
        parts = [
            f"{name} best honest test accuracy at {r['table'][0]['size']}/class "
            f"{100 * r['table'][0]['test_acc'][0]:.2f} %"
            for name, r in metrics["backbones"].items()
        ]
        return "fewshot-best: " + ("; ".join(parts) or "no backbone had weights")
    if study == "digits-best":
        src = metrics["source"]["best"]
        tr = metrics["transfer"]
        return (
            f"digits-best: source test precision {100 * src['test_precision']:.2f} %; transfer "
            + ", ".join(f"{v} {100 * tr[v]['test_acc'][0]:.1f} %" for v in tr)
        )
    if study == "digits":  # digits.run returns every unit's results
        parts = []
        if "tune" in metrics:
            parts.append(f"tuned test precision {100 * metrics['tune']['test_precision']:.2f} %")
        for v in ("frozen5", "scratch"):
            if v in metrics:
                parts.append(f"{v} {100 * metrics[v]['summary']['test_acc'][0]:.1f} %")
        return "digits: " + "; ".join(parts)
    return f"{study}: done"


def run_all(
    *,
    profile: str,
    root: Path,
    force: bool,
    seed: int,
    progress: Progress,
    execute: Callable[..., tuple[Path, Any]],
    device: str = "auto",
    protocol: str = "both",
) -> dict[str, Any]:
    """Run the studies of ``profile`` one after another and write ``root/manifest.json``.

    ``execute(study, config, runner, force=…)`` runs one study in its folder (the CLI passes
    one that adds a log file).
    """
    configs = profile_configs(profile, seed, device, protocol)
    manifest: dict[str, Any] = {
        "profile": profile,
        "protocol": protocol,
        "command": " ".join(["mnistlab", *sys.argv[1:]]) or "mnistlab",
        "folders": {},
        "wall_seconds": {},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    old = root / MANIFEST
    if old.is_file():  # keep the record of wall times from an earlier (interrupted) call
        try:
            prev = runs.read_json(old)
        except MnistlabError:
            prev = {}  # a damaged manifest is rewritten below
        if prev.get("profile") == profile:
            manifest["wall_seconds"] = prev.get("wall_seconds", {})
            manifest["folders"] = dict(prev.get("folders", {}))  # other protocols' studies
    for study, config in configs.items():
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
        runs.write_json(root / MANIFEST, manifest)
    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs.write_json(root / MANIFEST, manifest)
    return manifest


__all__ = ["PROFILES", "PROTOCOLS", "STUDIES", "profile_configs", "run_all", "summary_line"]
