"""Every study, once: its name, title, protocol, config, run function, report builder,
metrics schema, profiles (quick, and the test suite's tiny) and summary line.

The command line's choices, ``run all`` (its order and manifest), the report's order and
titles, the summary lines and the structure, schema and hostile-input tests all read this one
table, so adding a study is its module, its report builder and schema, and one :class:`Study`
entry here. It stays free of torch: study and report modules are named by import path and
loaded only when a study runs or a report is built (``mnistlab report`` never imports torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mnistlab import schemas, summaries
from mnistlab.errors import MnistlabError

PROFILES = ("quick", "full")
PROTOCOL_NAMES = ("specified", "best")  # run order of ``run all``: as specified first
PROTOCOLS = (*PROTOCOL_NAMES, "both")


def _load(path: str) -> Any:
    """``"package.module:attr"`` → the attribute (imported on first use)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Study:
    """One study as the rest of the tool knows it."""

    name: str
    title: str  # report heading (numbered by the report in registry order)
    help: str  # one line for ``mnistlab run --help``
    protocol: str  # "specified" (the questions as asked) or "best" (the best honest protocol)
    config_path: str  # "module:ConfigClass"
    run_path: str  # "module:run" — run(config, out_dir, env=None, **options)
    report_path: str  # "module:builder" — builder(folder, baseline) -> Section | [Section]
    summary: Callable[[dict[str, Any]], str]  # one line from the finished run's metrics
    quick: Mapping[str, Any] = field(default_factory=dict)  # quick-profile overrides
    tiny: Mapping[str, Any] = field(default_factory=dict)  # the test suite's seconds-long runs
    options: tuple[str, ...] = ()  # extra option groups of the CLI (``cli.OPTION_GROUPS``)
    in_suite: Mapping[str, Any] = field(default_factory=dict)  # run kwargs inside ``run all``
    baseline: str | None = None  # the as-specified study a best protocol is compared with
    metrics: Any = None  # the TypedDict of its metrics.json, or "module:Name" (loaded on use)
    opt_in: bool = False  # ``run all`` runs it only when asked (``--with NAME``)
    # Wall minutes per profile on the 2-core CPU, one study at a time (README, Timings):
    # ``run all --jobs`` starts the longest studies first, so that the last to finish is short.
    minutes: Mapping[str, float] = field(default_factory=dict)
    # "module:function" under ``mnistlab.studies`` that builds the study's cells from (config,
    # out, data_dir, device, progress): with it, ``run all --jobs`` may run an independent
    # cell in another worker while the study runs the rest (mnistlab.parallel).
    cells_path: str | None = None
    # Studies whose caches it reads: ``run all --jobs`` starts it after them, so that it loads
    # what they computed instead of computing it again beside them.
    after: tuple[str, ...] = ()

    @property
    def config(self) -> type:
        return _load(self.config_path)

    @property
    def run(self) -> Callable[..., dict]:
        return _load(self.run_path)

    @property
    def cells(self) -> Callable[..., list] | None:
        return _load(self.cells_path) if self.cells_path else None

    @property
    def report(self) -> Callable[..., Any]:
        return _load(self.report_path)

    @property
    def schema(self) -> Any:
        """The metrics TypedDict (a study may keep it beside its report builder)."""
        return _load(self.metrics) if isinstance(self.metrics, str) else self.metrics

    @property
    def command(self) -> str:
        return f"mnistlab run {self.name}"


# ------------------------------------------------------------------------- the table

_QUICK_FEWSHOT = {"sizes": (10, 30), "seeds": 2, "epochs": 40, "test_limit": 1000}
_QUICK_DIGITS = {
    "trials": 4,
    "folds": 2,
    "tune_max_epochs": 6,
    "max_epochs": 15,
    "transfer_seeds": 2,
    "dropout_rates": (0.1, 0.3),
}
_QUICK_STN = {"epochs": 3, "limit_train": 10_000, "limit_test": 2000}
_TINY_DEFORM = {"epochs": 1, "seeds": 2, "limit_train": 200, "limit_test": 100}
_SKIP_MISSING = {"skip_missing": True}
# Tiny: random-weight ResNet-18 on 32×32 inputs, a few hundred images — the test suite runs
# every study this way to check files, schemas, report and resume, never the numbers.
_TINY_FEWSHOT = {
    "backbones": ("resnet18",),
    "sizes": (2, 4),
    "seeds": 2,
    "epochs": 4,
    "val_per_class": 3,
    "lr_grid": (1e-3,),
    "weights": (("*", "random"),),
    "test_limit": 60,
    "image_size": 32,
    "extract_batch": 32,
}
_TINY_DIGITS = {
    "limit": 4000,
    "folds": 2,
    "transfer_seeds": 2,
    "transfer_max_epochs": 12,
    "transfer_patience": 3,
    "per_digit": 20,
    "val_per_digit": 20,
}  # run all skips a backbone without weights, with reason


def _entry(name: str, module: str, config: str, section: str, **kw: Any) -> Study:
    """``module`` under ``mnistlab.studies``; ``section``: ``"module:builder"`` under
    ``mnistlab.report.sections``."""
    kw["quick"] = MappingProxyType(kw.get("quick", {}))
    kw["tiny"] = MappingProxyType(kw.get("tiny", {}))
    kw["in_suite"] = MappingProxyType(kw.get("in_suite", {}))
    kw["minutes"] = MappingProxyType(kw.get("minutes", {}))
    if "cells" in kw:
        kw["cells_path"] = f"mnistlab.studies.{kw.pop('cells')}"
    return Study(
        name=name,
        config_path=f"mnistlab.studies.{module}:{config}",
        run_path=f"mnistlab.studies.{module}:run",
        report_path=f"mnistlab.report.sections.{section}",
        **kw,
    )


_STUDIES = (
    _entry(
        "fewshot",
        "fewshot.study",
        "FewshotConfig",
        "fewshot:fewshot",
        title="Few-shot ImageNet transfer",
        help="few-shot transfer: new 10-way layer on frozen ImageNet nets",
        protocol="specified",
        summary=summaries.fewshot_line,
        metrics=schemas.FewshotMetrics,
        quick=_QUICK_FEWSHOT,
        tiny={**_TINY_FEWSHOT, "seeds": 3, "val_per_class": 2},
        options=("backbones",),
        in_suite=_SKIP_MISSING,
        minutes={"full": 6.0, "quick": 0.74},
    ),
    _entry(
        "fewshot-best",
        "fewshot.best",
        "FewshotBestConfig",
        "fewshot:fewshot_best",
        title="Few-shot: the best honest protocol",
        help="few-shot: the best honest head (chosen on validation) on the same frozen features",
        protocol="best",
        summary=summaries.fewshot_best_line,
        metrics=schemas.FewshotBestMetrics,
        quick={**_QUICK_FEWSHOT, "views": 2, "view_strengths": ("strong",)},
        tiny={**_TINY_FEWSHOT, "c_grid": (0.1, 1.0, 10.0), "lbfgs_iters": 30},
        options=("backbones",),
        in_suite=_SKIP_MISSING,
        baseline="fewshot",
        minutes={"full": 5.0, "quick": 0.5},
        after=("fewshot",),  # its frozen features
    ),
    _entry(
        "stn",
        "stn.tutorial",
        "STNConfig",
        "stn.tutorial:stn",
        title="Spatial transformer network on MNIST",
        help="spatial transformer vs plain CNN on MNIST; what it learns",
        protocol="specified",
        summary=summaries.stn_line,
        metrics=schemas.STNTutorialMetrics,
        quick={**_QUICK_STN, "seeds": 1, "train_eval_size": 2000},
        tiny={
            "epochs": 2,
            "seeds": 2,
            "limit_train": 400,
            "limit_test": 200,
            "train_eval_size": 100,
        },
        minutes={"full": 14.0, "quick": 0.2},
        cells="stn.tutorial:cells",
    ),
    _entry(
        "stn-deform",
        "stn.deform",
        "STNDeformConfig",
        "stn.deform:stn_deform",
        title="STN on MNIST with elastic and zoom-out copies",
        help="STN on MNIST + elastic + zoom-out copies (60k → 180k)",
        protocol="specified",
        summary=summaries.deform_line,
        metrics=schemas.STNDeformMetrics,
        quick={**_QUICK_STN, "seeds": 1, "train_eval_size": 3000},
        tiny={**_TINY_DEFORM, "train_eval_size": 100},
        minutes={"full": 40.0, "quick": 0.5},
        cells="stn.deform:cells",
    ),
    _entry(
        "stn-best",
        "stn.best",
        "STNBestConfig",
        "stn.best:stn_best",
        title="STN on MNIST with elastic and zoom-out copies: the best honest recipe",
        help="the tutorial's STN on the 180k set with a recipe chosen on validation (opt-in)",
        protocol="best",
        summary=summaries.stn_best_line,
        metrics="mnistlab.report.sections.stn.best:STNBestMetrics",
        quick={
            **_QUICK_STN,
            "seeds": 1,
            "train_eval_size": 3000,
            "search_digits": 3000,
            "val_digits": 2000,
            "search_epochs": 2,
            "recipes": ("tutorial", "cosine-loc0.1"),
        },
        tiny={
            **_TINY_DEFORM,
            "train_eval_size": 100,
            "search_digits": 60,
            "val_digits": 60,
            "search_epochs": 1,
            "recipes": ("tutorial", "cosine-loc0.1"),
        },
        baseline="stn-deform",
        opt_in=True,
        minutes={"full": 25.0, "quick": 1.0},
        cells="stn.best:cells",
        after=("stn-deform",),  # its expanded data set
    ),
    _entry(
        "stn-paper",
        "stn.paper",
        "STNPaperConfig",
        "stn.paper:stn_paper",
        title="The STN paper's distorted MNIST (R, RTS, P, E): CNN vs ST-CNN",
        help="the STN paper's benchmark: CNN vs ST-CNN on rotated, RTS, projective, elastic MNIST",
        protocol="specified",
        summary=summaries.paper_line,
        metrics="mnistlab.report.sections.stn.paper:STNPaperMetrics",
        quick={
            "epochs": 1,
            "seeds": 1,
            "limit_train": 10_000,
            "limit_test": 2000,
            "lr_grid": (0.01,),
            "loc_scales": (1.0, 0.1),
            "search_train": 5000,
            "val_size": 2000,
        },
        tiny={
            "epochs": 1,
            "seeds": 2,
            "limit_train": 300,
            "limit_test": 100,
            "lr_grid": (0.01,),
            "loc_scales": (1.0, 0.1),
            "search_train": 200,
            "val_size": 100,
        },
        opt_in=True,
        cells="stn.paper:cells",
        minutes={"full": 41.0, "quick": 1.0},
    ),
    _entry(
        "digits",
        "digits.study",
        "DigitsConfig",
        "digits:digits",
        title="Digits: the 5×100 MLP, tuning, batch norm, dropout",
        help="MLP on digits 0–4, tuning, BN, dropout, transfer to 5–9",
        protocol="specified",
        summary=summaries.digits_line,
        metrics=schemas.DigitsMetrics,
        quick=_QUICK_DIGITS,
        tiny={
            **_TINY_DIGITS,
            "trials": 2,
            "tune_max_epochs": 2,
            "max_epochs": 3,
            "transfer_seeds": 3,
            "transfer_max_epochs": 15,
            "transfer_patience": 4,
            "dropout_rates": (0.2, 0.5),
        },
        options=("parts",),
        minutes={"full": 3.4, "quick": 1.32},
    ),
    _entry(
        "digits-best",
        "digits.best",
        "DigitsBestConfig",
        "digits_best:digits_best",
        title="Digits: the best honest protocol",
        help="digits: wider cross-validated search and validation-chosen transfer recipes",
        protocol="best",
        summary=summaries.digits_best_line,
        metrics=schemas.DigitsBestMetrics,
        quick={
            **_QUICK_DIGITS,
            "best_trials": 4,
            "best_max_epochs": 6,
            "source_l2s": (1e-4,),
            "head_lrs": (1e-2,),
            "head_l2s": (0.0,),
            "head_augments": ("none", "shift2-rot10-elastic"),
            "unfreeze_factors": (0.1, 1.0),
        },
        tiny={
            **_TINY_DIGITS,
            "best_trials": 3,
            "best_max_epochs": 2,
            "max_epochs": 3,
            "source_l2s": (1e-5,),
            "source_augments": ("none", "shift2-rot10"),
            "head_lrs": (1e-2,),
            "head_l2s": (0.0, 1e-4),
            "head_augments": ("none", "elastic"),
            "unfreeze_factors": (0.1, 1.0),
        },
        baseline="digits",
        minutes={"full": 7.9, "quick": 1.13},
    ),
)
STUDIES: Mapping[str, Study] = MappingProxyType({s.name: s for s in _STUDIES})
OPT_IN = tuple(s.name for s in _STUDIES if s.opt_in)  # what ``run all --with`` accepts


def get(name: str) -> Study:
    try:
        return STUDIES[name]
    except KeyError:
        raise MnistlabError(
            f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}"
        ) from None


def in_protocol(protocol: str, with_: tuple[str, ...] = ()) -> list[Study]:
    """The studies ``run all --protocol`` runs, in run order (as specified first); opt-in
    studies only when named in ``with_``."""
    if protocol not in PROTOCOLS:
        raise MnistlabError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    for name in with_:
        if not get(name).opt_in:
            raise MnistlabError(
                f"--with {name}: it runs anyway; --with takes: {', '.join(OPT_IN) or 'nothing'}"
            )
    wanted = PROTOCOL_NAMES if protocol == "both" else (protocol,)
    for name in with_:
        if get(name).protocol not in wanted:
            raise MnistlabError(
                f"--with {name}: it belongs to the {get(name).protocol} protocol, "
                f"not to --protocol {protocol}"
            )
    return [
        s for p in wanted for s in _STUDIES if s.protocol == p and (not s.opt_in or s.name in with_)
    ]


def profile_configs(
    profile: str,
    seed: int = 0,
    device: str = "auto",
    protocol: str = "both",
    with_: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The config of every study of ``protocol`` (and the opt-in ones in ``with_``) under
    ``profile``, in run order (``"tiny"``: the test suite's runs, not on the command line)."""
    if profile not in (*PROFILES, "tiny"):
        raise MnistlabError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    common = {"seed": seed, "device": device}
    overrides = {"quick": lambda s: s.quick, "tiny": lambda s: s.tiny}.get(profile, lambda s: {})
    return {s.name: s.config(**common, **overrides(s)) for s in in_protocol(protocol, with_)}


def summary_line(name: str, metrics: dict[str, Any]) -> str:
    return f"{name}: {get(name).summary(metrics)}"


__all__ = [
    "OPT_IN",
    "PROFILES",
    "PROTOCOLS",
    "STUDIES",
    "Study",
    "get",
    "in_protocol",
    "profile_configs",
    "summary_line",
]
