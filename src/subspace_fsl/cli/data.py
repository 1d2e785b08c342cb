"""``subspace-fsl synth | prepare | split``: raw data, its image cache, the class split."""

from __future__ import annotations

import argparse

from subspace_fsl.cli.common import SubParsers, command, config_from_args
from subspace_fsl.logs import setup_logging


def run_synth(args: argparse.Namespace) -> int:
    from subspace_fsl.data.synth import generate

    setup_logging()
    settings = config_from_args(args)["dataset"]["synthetic"]
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else settings[key]
              for key in ("classes", "images_per_class", "size", "seed")}
    try:
        out = generate(args.out, **chosen, workers=args.workers)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    print(f"wrote {chosen['classes']} classes x {chosen['images_per_class']} images "
          f"at {chosen['size']} px to {out}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from subspace_fsl.data.cache import ImageCache, prepare

    setup_logging()
    try:
        cache = ImageCache.open(prepare(config_from_args(args), workers=args.workers))
    except (ConnectionError, FileExistsError) as exc:  # reported like the other errors
        raise ValueError(str(exc)) from None
    n, _, height, width = cache.images.shape
    print(f"cache {cache.directory}: {n} images, {len(cache.class_names)} classes, "
          f"{height}x{width} px, {cache.images.nbytes / 1e6:.1f} MB, stamp {cache.stamp[:12]}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    """``data.splits.write_split`` (the class split of the cache's classes)."""
    from subspace_fsl.data.splits import write_split

    setup_logging()
    print(write_split(config_from_args(args), args.cache, args.out))
    return 0


def register(sub: SubParsers) -> None:
    parser = command(
        sub, "synth", run_synth, "write the synthetic sub-category data set in CUB's layout",
        "Write the synthetic data set (CUB-200-2011's layout) to --out. Options left out take "
        "dataset.synthetic.* from --config/--set or the schema.")
    parser.add_argument("--out", required=True, help="folder to create (must not exist)")
    parser.add_argument("--classes", type=int, help="number of classes")
    parser.add_argument("--images-per-class", type=int, help="images per class")
    parser.add_argument("--size", type=int, help="image side in pixels")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    parser = command(
        sub, "prepare", run_prepare, "raw data (download + extract, or synthesise) -> image cache",
        "Make the configuration's raw data available (download and extract CUB-200-2011, "
        "generate the synthetic set, or read a folder of class sub-folders) and build or reuse "
        "its image cache.")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default 2)")

    parser = command(sub, "split", run_split,
                     "make the base / validation / novel class split of the image cache")
    parser.add_argument("--cache", metavar="DIR", help="image cache (default: from the settings)")
    parser.add_argument("--out", "-o", metavar="JSON",
                        help="split file (default {results_dir}/splits/{dataset}.json)")
