"""Handlers of the workflow's sub-commands (``split``, ``init-tracking``, ``select``,
``tables``, ``plots``, ``runs``, ``show-config``): load the settings, call the package."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from subspace_fsl import grid, paths
from subspace_fsl.config import atomic_write_text, load_config


def _cfg(args: argparse.Namespace) -> dict:
    return load_config(args.config, args.overrides)


def run_split(args: argparse.Namespace) -> int:
    """Class names of the cache (class_id order) -> ``make_split`` -> ``save_split``."""
    from subspace_fsl.data.cache import ImageCache
    from subspace_fsl.data.splits import make_split, save_split

    cfg = _cfg(args)
    cache = ImageCache.open(args.cache or paths.cache_dir(cfg))
    classes = cache.index[["class_id", "class_name"]].drop_duplicates().sort_values("class_id")
    settings = cfg["split"]
    split = make_split([str(n) for n in classes["class_name"]], settings["rule"],
                       settings["counts"], settings["seed"])
    out = save_split(split, args.out or paths.split_path(cfg))
    print(f"{out}: rule {split['rule']}, {len(split['base'])} base / {len(split['val'])} "
          f"validation / {len(split['novel'])} novel classes")
    return 0


def run_init_tracking(args: argparse.Namespace) -> int:
    """The MLflow store, experiment and the benchmark's parent run, once, before the training
    jobs fan out (``benchmark_tracking.init_benchmark``); writes the marker they read."""
    from subspace_fsl.benchmark_tracking import init_benchmark

    record = init_benchmark(_cfg(args))
    out = Path(args.out or paths.tracking_marker(_cfg(args)))
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from subspace_fsl.selection import read_selection, run_selection

    path = run_selection(_cfg(args))
    print(f"{path}:")
    print(read_selection(path).to_string(index=False))
    return 0


def run_tables(args: argparse.Namespace) -> int:
    from subspace_fsl.benchmark_tracking import log_selection_and_tables
    from subspace_fsl.report import write_tables

    cfg = _cfg(args)
    written = write_tables(cfg)
    log_selection_and_tables(cfg, written)  # into the benchmark's MLflow parent run
    for path in written:
        print(path)
    return 0


def run_plots(args: argparse.Namespace) -> int:
    from subspace_fsl.benchmark_tracking import log_plots
    from subspace_fsl.report import write_plots

    cfg = _cfg(args)
    written = write_plots(cfg)
    log_plots(cfg, written)  # into the benchmark's MLflow parent run
    for path in written:
        print(path)
    return 0


def run_runs(args: argparse.Namespace) -> int:
    for run in grid.all_runs(_cfg(args)):
        print(f"{run.method}/{run.name}")
    return 0


def run_show_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_cfg(args), sort_keys=False), end="")
    return 0
