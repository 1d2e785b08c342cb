# Grid expansion and path helpers: every path comes from subspace_fsl.paths, every run from
# subspace_fsl.grid (wildcards {method}/{run} <-> readable run names w5_k1_S4_l1-0.1_...;
# the run pattern, with the optional _t10 / _tlearn10 / _deuc parts, is paths.RUN_WILDCARD).
import re

from subspace_fsl import grid, paths, readers
from subspace_fsl import report as fsl_report
from subspace_fsl import snakemake_job
from subspace_fsl import targets as fsl_targets
from subspace_fsl import frozen_protocol as fsl_protocol

# train.backbone: frozen needs the pretrained init and an augmentation stored features allow
fsl_protocol.check_frozen_settings(config)
METHODS = [grid.method_name(config), *grid.baseline_names(config)]
RUNS = grid.all_runs(config)
DATASET = paths.dataset_name(config)
# params = the settings a rule's stage reads (a change re-runs the job; subspace_fsl.snakemake_job)
GRID_SETTINGS = snakemake_job.grid_settings(config)
LOGS = paths.logs_dir(config)
BENCHMARKS = paths.benchmarks_dir(config)

RUN_DIR = paths.run_dir(config, "{method}", "{run}")
EVAL_DIR = paths.eval_dir(config, "{method}", "{split}", "{run}")
EVAL_SHOT_DIR = paths.eval_dir(config, "{method}", "{split}", "{run}", "{shot}")
# cross-domain targets (eval.targets): their caches and evaluations (subspace_fsl.targets)
TARGET_CACHE = fsl_targets.cache_dir(config, "{target}")
EVAL_TARGET_DIR = fsl_targets.eval_dir(config, "{method}", "{run}", "{target}")


wildcard_constraints:
    method="|".join(re.escape(m) for m in METHODS),
    run=paths.RUN_WILDCARD,
    split="|".join(paths.SPLITS),
    shot=r"\d+",
    target=r"[a-z0-9][a-z0-9_-]*",


def stage_settings(stage):
    return snakemake_job.stage_settings(config, stage)


def run_settings(wildcards):
    """The complete result settings of one run (not the grid)."""
    return snakemake_job.run_settings(config, wildcards.method, wildcards.run)


def evaluation_settings(wildcards):
    """run_settings and eval.episodes: what an evaluation of the run depends on."""
    return snakemake_job.evaluation_settings(config, wildcards.method, wildcards.run)


def evaluation_only(wildcards, threads):
    """eval.episodes and eval.shots for the job's records; a function of threads, so not a
    rerun trigger (an evaluation's eval.episodes is one through evaluation_settings)."""
    return snakemake_job.evaluation_only(config)


def target_prepare_settings(wildcards):
    """The target's dataset settings and the model's preprocessing (its cache's params)."""
    return snakemake_job.sorted_settings(fsl_targets.prepare_settings(config, wildcards.target))


def target_evaluation_settings(wildcards):
    """The run's settings, eval.episodes and this target's settings alone."""
    return snakemake_job.sorted_settings(
        fsl_targets.evaluation_settings(config, wildcards.method, wildcards.run, wildcards.target)
    )


def pretrained_input(wildcards):
    """The pretrain stage's backbone when the runs start from it (train.init: pretrained)."""
    if config["train"]["init"] == "pretrained":
        return [paths.pretrained_backbone(config)]
    return []


def cache_input(wildcards):
    """The image cache, unless the runs read stored features (train.backbone: frozen); one
    path or none, so the script reads ``snakemake.input.cache or None``."""
    return [] if fsl_protocol.is_frozen(config) else str(paths.cache_dir(config))


def features_input(wildcards):
    """The embed rule's feature file when the runs read it (train.backbone: frozen)."""
    return str(paths.features_path(config)) if fsl_protocol.is_frozen(config) else []


def runtime_settings(wildcards, threads):
    """runtime + tracking with the job's threads; a function of threads, so not a rerun trigger."""
    return snakemake_job.runtime_settings(config, threads)


def eval_files(split, name="episodes.csv"):
    """Every run's evaluations on ``split``: at each of its eval shots (paths.eval_shots)."""
    return [
        paths.eval_shot_dir(config, run.method, split, run.name, run.key.shot, shot) / name
        for run in RUNS
        for shot in paths.eval_shots(config, split, run.key.shot)
    ]


# an evaluation or selection file that exists but cannot be read (a truncated summary.json)
# counts as missing: removed here (by the main process only, not by each job), so Snakemake
# re-runs the job that makes it
if workflow.is_main_process:
    readers.discard_unreadable(
        [
            *(
                f
                for split in paths.SPLITS
                for name in ("summary.json", "episodes.csv")
                for f in eval_files(split, name)
            ),
            paths.selection_path(config),
        ]
    )


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
