"""``subspace-fsl init-tracking | select | tables | plots | explain | runs | show-config``: the
benchmark's MLflow set-up, the choice on validation, its reports, and looking at settings."""

from __future__ import annotations

import argparse
import json

from subspace_fsl.cli.common import SubParsers, command, config_from_args
from subspace_fsl.logs import setup_logging


def run_init_tracking(args: argparse.Namespace) -> int:
    """``benchmark_tracking.write_marker``: the MLflow store, experiment and the benchmark's
    parent run, once, before the training jobs fan out."""
    from subspace_fsl.benchmark_tracking import write_marker

    setup_logging()
    print(json.dumps(write_marker(config_from_args(args), args.out)))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from subspace_fsl.selection import read_selection, run_selection

    path = run_selection(config_from_args(args))
    print(f"{path}:")
    print(read_selection(path).to_string(index=False))
    return 0


def run_tables(args: argparse.Namespace) -> int:
    from subspace_fsl.benchmark_tracking import publish_tables

    for path in publish_tables(config_from_args(args)):  # written, and logged into the parent
        print(path)
    return 0


def run_plots(args: argparse.Namespace) -> int:
    from subspace_fsl.benchmark_tracking import publish_plots

    for path in publish_plots(config_from_args(args)):  # written, and logged into the parent
        print(path)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from subspace_fsl.explain.pipeline import run_explain as explain

    setup_logging()
    print(f"wrote {explain(config_from_args(args), args.out)}")
    return 0


def run_runs(args: argparse.Namespace) -> int:
    from subspace_fsl import grid

    for run in grid.all_runs(config_from_args(args)):
        print(f"{run.method}/{run.name}")
    return 0


def run_show_config(args: argparse.Namespace) -> int:
    from subspace_fsl.config import yaml_dump
    from subspace_fsl.grid import dropped_duplicates

    cfg = config_from_args(args)
    note = dropped_duplicates(cfg)
    if note:  # a YAML comment: the output still reads as the settings
        print(f"# {note}")
    print(yaml_dump(cfg), end="")  # quoted: YAML 1.1 and 1.2 read it alike
    return 0


def register(sub: SubParsers) -> None:
    parser = command(sub, "init-tracking", run_init_tracking,
                     "create the MLflow store, the data set's experiment and the benchmark's "
                     "parent run (before training)")
    parser.add_argument("--out", "-o", metavar="JSON",
                        help="marker file (default {results_dir}/tracking/{dataset}.json)")
    command(sub, "select", run_select,
            "choose every method's settings on validation (per way and shot)")
    command(sub, "tables", run_tables, "write every results table (CSV, Markdown, LaTeX)")
    command(sub, "plots", run_plots, "draw every results plot (PNG, PDF)")
    parser = command(
        sub, "explain", run_explain,
        "evidence maps and part measures of the chosen models (novel episodes)",
        "Per-subspace evidence maps of the models chosen in the selection file (every lambda1 "
        "at the chosen lambda2, and the baselines) on novel episodes: specialization, profile "
        "diversity, RV matrix, principal angles, the lambda1 > 0 vs lambda1 = 0 paired test, "
        "and figures (docs/explain.md).")
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="output folder (default {results_dir}/explain/{dataset})")
    command(sub, "runs", run_runs, "list the runs of the grid (method/run-name), one a line")
    command(sub, "show-config", run_show_config,
            "print the resolved settings (schema defaults filled in) as YAML")
