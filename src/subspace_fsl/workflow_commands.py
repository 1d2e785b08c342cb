"""Handlers of the workflow's sub-commands (``split``, ``init-tracking``, ``select``,
``tables``, ``plots``, ``runs``, ``show-config``): load the settings, call the package."""

from __future__ import annotations

import argparse
import json

from subspace_fsl import grid
from subspace_fsl.config import load_config, yaml_dump


def _cfg(args: argparse.Namespace) -> dict:
    return load_config(args.config, args.overrides)


def run_split(args: argparse.Namespace) -> int:
    """``data.splits.write_split`` (the class split of the cache's classes)."""
    from subspace_fsl.data.splits import write_split
    from subspace_fsl.engine.commands import setup_logging

    setup_logging()
    print(write_split(_cfg(args), args.cache, args.out))
    return 0


def run_init_tracking(args: argparse.Namespace) -> int:
    """``benchmark_tracking.write_marker``: the MLflow store, experiment and the benchmark's
    parent run, once, before the training jobs fan out."""
    from subspace_fsl.benchmark_tracking import write_marker

    print(json.dumps(write_marker(_cfg(args), args.out)))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from subspace_fsl.selection import read_selection, run_selection

    path = run_selection(_cfg(args))
    print(f"{path}:")
    print(read_selection(path).to_string(index=False))
    return 0


def run_tables(args: argparse.Namespace) -> int:
    from subspace_fsl.benchmark_tracking import publish_tables

    for path in publish_tables(_cfg(args)):  # written, and logged into the parent run
        print(path)
    return 0


def run_plots(args: argparse.Namespace) -> int:
    from subspace_fsl.benchmark_tracking import publish_plots

    for path in publish_plots(_cfg(args)):  # written, and logged into the parent run
        print(path)
    return 0


def run_runs(args: argparse.Namespace) -> int:
    for run in grid.all_runs(_cfg(args)):
        print(f"{run.method}/{run.name}")
    return 0


def run_show_config(args: argparse.Namespace) -> int:
    print(yaml_dump(_cfg(args)), end="")  # quoted so YAML 1.1 and 1.2 read it back alike
    return 0
