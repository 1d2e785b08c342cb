# Grid expansion and path helpers: every path comes from subspace_fsl.paths, every run from
# subspace_fsl.grid (wildcards {method}/{run} <-> readable run names w5_k1_S4_l1-0.1_...).
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
    run=r"w\d+_k\d+_S\d+_l1-[0-9.e+-]+_l2-[0-9.e+-]+_seed-?\d+",
    split="|".join(paths.SPLITS),


def data_args(*sections):
    """--set arguments of the top-level settings (paths) and the given sections only: the
    data jobs' params, so that a changed split.counts re-runs `split` (and what depends on
    it) while a changed train.* or eval.* setting leaves the cache and the split alone."""
    return grid.cli_overrides(
        {k: v for k, v in grid.result_settings(config).items()
         if not isinstance(v, dict) or k in sections}
    )


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
