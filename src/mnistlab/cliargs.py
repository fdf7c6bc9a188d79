"""The command line's parser, built from the studies' config dataclasses: option types that
refuse bad values with one line, every config field as a flag (help, unit, default, range),
the extra option groups a study declares, and the ``run`` commands' shared options. The
commands themselves and the error boundary live in :mod:`mnistlab.cli`."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mnistlab.errors import MnistlabError

MAX_JOBS = 64  # worker processes of ``run all`` (each study is one job; there are seven)
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage block)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------------ value parsers


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def parse_jobs(text: str) -> int | str:
    if text == "auto":
        return text
    n = parse_int(text)
    if not 1 <= n <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"--jobs must be auto or 1..{MAX_JOBS}, not {n}")
    return n


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def parse_list(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError("empty list")
        if not all(parts):
            raise argparse.ArgumentTypeError(f"empty item in {text!r}")
        return tuple(item(p) for p in parts)

    return parse


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: parse_int,
    float: parse_float,
    str: str,
    tuple[int, ...]: parse_list(parse_int),
    tuple[float, ...]: parse_list(parse_float),
    tuple[str, ...]: parse_list(str),
    int | None: parse_int,
}


def add_config_options(
    parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()
) -> None:
    """One option per field of the config dataclass ``cls`` (its help, unit and default shown);
    fields marked ``cli=""`` stay library-only, ``skip`` ones are added by hand."""
    from mnistlab.config import flag

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") == "" or f.name in skip:
            continue
        hidden = f.metadata.get("cli") == "hidden"  # accepted (tests, benchmarks), not shown
        kind = _PARSERS.get(hints[f.name])
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line parser for {hints[f.name]}")
        text = argparse.SUPPRESS if hidden else f"{f.metadata['help']} ({_default_text(f)})"
        parser.add_argument(flag(f), dest=f.name, type=kind, default=None, help=text)


def _default_text(f: dataclasses.Field) -> str:
    """``default: 20 epochs`` / ``default: all`` / ``default: sgd; one of sgd, adam``."""
    default = f.default
    if default is None:
        text = "all"
    elif isinstance(default, tuple):
        text = ",".join(map(str, default))
    else:
        text = f"{default} {f.metadata['unit']}".strip() if f.metadata.get("unit") else str(default)
    if f.metadata.get("choices"):
        text += f"; one of {', '.join(f.metadata['choices'])}"
    return f"default: {text}"


def config_from(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The config with every option the user gave (others keep the dataclass defaults)."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return cls(**{**given, **fixed})


# ------------------------------------------------------------------------ option groups
# Options that are not config fields, shared by the studies whose registry entry names them.


def _backbone_options(p: argparse.ArgumentParser) -> None:
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


def _backbone_fields(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    backbones = tuple(args.backbones or cls.backbones)
    fixed = {
        "backbones": backbones,
        "weights": weights_overrides(args.weights_specs, backbones),
        "cache": not args.no_cache,
    }
    for _, spec in fixed["weights"]:
        if spec != "random" and not Path(spec).is_file():
            raise MnistlabError(f"weights file {spec} does not exist")
    return fixed


def _parts_options(p: argparse.ArgumentParser) -> None:
    from mnistlab.studies.digits import PARTS

    p.add_argument(
        "--part",
        action="append",
        choices=list(PARTS),
        help="run only this part (repeatable; dependencies run as needed; default: all)",
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="a shared Optuna database for the tuning, e.g. postgresql+psycopg://user@host/db "
        "(several processes share its trials; default: SQLite in the run folder)",
    )


def _parts_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from mnistlab.studies.digits import PARTS

    return {"parts": tuple(args.part or PARTS), "storage": args.storage}


@dataclasses.dataclass(frozen=True)
class OptionGroup:
    """Extra options of a study: how to add them, the config fields and the run keywords
    they give."""

    add: Callable[[argparse.ArgumentParser], None]
    fields: Callable[[argparse.Namespace, type], dict[str, Any]] = lambda args, cls: {}
    run_kwargs: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}


OPTION_GROUPS = {
    "backbones": OptionGroup(_backbone_options, fields=_backbone_fields),
    "parts": OptionGroup(_parts_options, run_kwargs=_parts_kwargs),
}


# ------------------------------------------------------------------------ checks at the edge


def common(p: argparse.ArgumentParser) -> None:
    from mnistlab.executors import EXECUTORS
    from mnistlab.tracking import TRACKERS

    p.add_argument("--results", type=Path, default=None, help="results root (default: ./results)")
    p.add_argument("--force", action="store_true", help="recompute finished results")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST IDX files")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where the study's independent cells run: here, or as Ray tasks (default: local)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join: auto, or host:port (default: start a local Ray instance)",
    )
    p.add_argument(
        "--track",
        choices=TRACKERS,
        default="none",
        help=(
            "also log finished runs to MLflow (MLFLOW_TRACKING_URI, else SQLite in the results "
            "root; default: none)"
        ),
    )


def _device_help() -> str:
    from mnistlab.config import DEVICES

    return f"one of {', '.join(DEVICES)}, or cuda:N (default: auto)"


def add_run(sub, run: Callable, run_all: Callable) -> None:
    """``mnistlab run STUDY`` (options from each config) and ``mnistlab run all``."""
    from mnistlab import registry

    cmd = sub.add_parser("run", help="run a study (results/<study>/<config-hash>/)")
    rsub = cmd.add_subparsers(dest="study", required=True, parser_class=Parser)
    for name, study in registry.STUDIES.items():
        _study_parser(rsub.add_parser(name, help=study.help), study, run)
    _run_all_parser(rsub.add_parser("all", help="every study with one profile, then the report"))
    rsub.choices["all"].set_defaults(func=run_all, study="all")


def _study_parser(p: argparse.ArgumentParser, study: Any, run: Callable) -> None:
    """One study's options: its config's fields, its option groups, device and workers."""
    add_config_options(p, study.config, skip=("device",))
    for group in study.options:
        OPTION_GROUPS[group].add(p)
    p.add_argument("--device", default="auto", help=_device_help())
    if study.cells_path is not None:
        p.add_argument(
            "--jobs",
            type=parse_jobs,
            default="auto",
            metavar="N",
            help="worker processes for the study's independent cells (one thread each on a "
            "2-core CPU, as in run all); auto: 2 on a CPU with 2+ cores (default: auto)",
        )
    common(p)
    p.set_defaults(func=run)


def _run_all_parser(a: argparse.ArgumentParser) -> None:
    from mnistlab import registry

    a.add_argument(
        "--profile",
        choices=registry.PROFILES,
        default="full",
        help="full: the studies as specified; quick: a few-minute demonstration (default: full)",
    )
    a.add_argument(
        "--protocol",
        choices=registry.PROTOCOLS,
        default="both",
        help="specified: the studies as written; best: the best honest protocols "
        "(fewshot-best, digits-best); both (default: both)",
    )
    a.add_argument(
        "--with",
        dest="with_",
        action="append",
        choices=registry.OPT_IN,
        help="also run this opt-in study (repeatable; default: none)",
    )
    a.add_argument("--seed", type=parse_int, default=0, help="master seed (default: 0)")
    a.add_argument("--device", default="auto", help=_device_help())
    a.add_argument(
        "--jobs",
        type=parse_jobs,
        default="auto",
        metavar="N",
        help="studies run side by side in N worker processes, each with cores/N threads; auto: "
        "2 on a CPU with 2+ cores, 1 on a GPU or with --executor ray (default: auto)",
    )
    common(a)
