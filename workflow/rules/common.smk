# Grid expansion and path helpers: every path comes from subspace_fsl.paths, every run from
# subspace_fsl.grid (wildcards {method}/{run} <-> readable run names w5_k1_S4_l1-0.1_...;
# the run pattern, with the optional _t10 / _tlearn10 / _deuc parts, is paths.RUN_WILDCARD).
import re

from subspace_fsl import grid, paths
from subspace_fsl import report as fsl_report

METHODS = [grid.method_name(config), *grid.baseline_names(config)]
RUNS = grid.all_runs(config)
DATASET = paths.dataset_name(config)
# the settings that decide results: part of each job's params (a change re-runs the job)
CONFIG_ARGS = grid.cli_overrides(grid.result_settings(config))
# where and how jobs run, and where they log (params too: the linter asks for it)
RUNTIME_ARGS = grid.cli_overrides(grid.runtime_settings(config))
LOGS = paths.logs_dir(config)
BENCHMARKS = paths.benchmarks_dir(config)

RUN_DIR = paths.run_dir(config, "{method}", "{run}")
EVAL_DIR = paths.eval_dir(config, "{method}", "{split}", "{run}")


wildcard_constraints:
    method="|".join(re.escape(m) for m in METHODS),
    run=paths.RUN_WILDCARD,
    split="|".join(paths.SPLITS),


def run_args(wildcards):
    """--set arguments with the complete result settings of one run (not the grid)."""
    return grid.cli_overrides(grid.run_settings(config, wildcards.method, wildcards.run))


def eval_files(split, name="episodes.csv"):
    return [
        paths.eval_dir(config, run.method, split, run.name) / name
        for run in RUNS
    ]


def model_files():
    return [paths.run_dir(config, run.method, run.name) / "best.pt" for run in RUNS]


def history_files():
    return [paths.run_dir(config, run.method, run.name) / "history.csv" for run in RUNS]


def table_files(formats=fsl_report.TABLE_FORMATS):
    out = paths.tables_dir(config)
    return [out / f"{name}.{ext}" for name in fsl_report.TABLE_NAMES for ext in formats]


def plot_files(formats=fsl_report.PLOT_FORMATS):
    out = paths.plots_dir(config)
    return [out / f"{name}.{ext}" for name in fsl_report.PLOT_NAMES for ext in formats]
