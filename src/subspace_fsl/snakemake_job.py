"""The one bridge between the Snakemake workflow and the package (no stage logic lives here).

**Rule side** (``workflow/rules/common.smk``): the settings each rule passes as ``params``. A
job re-runs when its params change (Snakemake's ``params`` rerun trigger compares their
``repr``), so every rule gets exactly the settings its stage reads, with keys sorted (a
reordered config file changes nothing):

- the data stages (``synthesise``, ``prepare``, ``split``):
  :data:`STAGE_SECTIONS`, e.g. ``split`` re-runs on a changed ``split.seed``, ``prepare`` does not;
- ``pretrain``: the settings the pre-trained backbone depends on (:func:`pretrain_settings`);
- ``train``: the run's own settings (:func:`subspace_fsl.grid.run_settings`: no ``grid``
  section, so adding a grid value leaves the existing runs alone, and of ``eval`` only what
  the validation reads, so more evaluation episodes or another ``eval.shots`` re-train
  nothing); ``evaluate`` and ``evaluate_shot``: the same plus ``eval.episodes``
  (:func:`subspace_fsl.grid.evaluation_settings`);
- ``train``, ``evaluate``, ``evaluate_shot``: the evaluation-only ``eval`` settings
  (``eval.episodes``, ``eval.shots``) once more, as a function of ``threads`` (see below):
  not a rerun trigger, so that the job's settings, and the ``config.yaml`` it writes, are the
  user's and not the schema's defaults;
- ``init_tracking``, ``select``, ``tables``, ``plots``, ``explain``: every result setting
  (:func:`subspace_fsl.grid.result_settings`; ``init_tracking`` makes the benchmark's MLflow
  parent run of exactly this grid; it is an input of the tables and plots stages, which log
  into it and move every run of the grid under it, not of the training jobs: each makes the
  store itself, safely under concurrency, so a new parent re-trains nothing);
- every rule: the ``runtime`` and ``tracking`` sections with the job's ``threads`` filled in, as
  a function of ``threads``: Snakemake treats such a param as derived and leaves it out of the
  rerun trigger, so moving a run to another device or tracking server re-runs nothing.

**Script side** (``workflow/scripts/<rule>.py``): each script is::

    from subspace_fsl.snakemake_job import job

    with job(snakemake) as cfg:
        <the stage's public function>(cfg, snakemake.input..., snakemake.output...)

:func:`job` sends everything the job prints or logs to the rule's log file, rebuilds the
validated settings from the params (schema defaults filled in, as ``--config`` does for the
CLI) and reports a user's mistake as the CLI does: one line ``subspace-fsl <rule>: error: ...``
(in the log and on the terminal), exit code 2, no traceback unless ``SUBSPACE_FSL_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from subspace_fsl import grid
from subspace_fsl.config import Config, validate
from subspace_fsl.errors import debug_enabled, exit_code, user_message

log = logging.getLogger(__name__)

#: the top-level settings each data stage reads; a change to one of them re-runs that stage
#: (and, through the files it rewrites, whatever was made from them)
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synthesise": ("data_dir", "dataset"),
    "prepare": ("results_dir", "data_dir", "dataset"),
    "split": ("results_dir", "data_dir", "dataset", "split"),
}

# --- rule side -------------------------------------------------------------------------------


def sorted_settings(settings: Any) -> Any:
    """A deep copy with every mapping's keys sorted: one ``repr`` per set of values."""
    if isinstance(settings, Mapping):
        return {key: sorted_settings(settings[key]) for key in sorted(settings)}
    if isinstance(settings, list | tuple):
        return [sorted_settings(value) for value in settings]
    return copy.deepcopy(settings)


def stage_settings(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The params of a data stage: the sections of :data:`STAGE_SECTIONS` it reads."""
    if stage not in STAGE_SECTIONS:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_SECTIONS)}")
    from subspace_fsl.data.splits import split_settings

    sections = {key: cfg[key] for key in STAGE_SECTIONS[stage]}
    if "split" in sections:
        sections["split"] = split_settings(sections["split"])
    return sorted_settings(sections)


def pretrain_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The params of the pretrain stage: the folders and what the pre-trained weights depend
    on (``engine.pretrain.pretrain_settings``: not the grid, not ``train``)."""
    from subspace_fsl.engine.pretrain import pretrain_settings as depends_on

    return sorted_settings(
        {"results_dir": cfg["results_dir"], "data_dir": cfg["data_dir"], **depends_on(cfg)}
    )


def grid_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The params of the stages that read the whole grid (select, tables, plots)."""
    return sorted_settings(grid.result_settings(cfg))


def run_settings(cfg: Mapping[str, Any], method: str, run: str) -> dict[str, Any]:
    """The params of one run's train and evaluate jobs (its own settings, no grid)."""
    return sorted_settings(grid.run_settings(cfg, method, run))


def evaluation_settings(cfg: Mapping[str, Any], method: str, run: str) -> dict[str, Any]:
    """The params of one run's evaluate jobs: its run settings and ``eval.episodes``."""
    return sorted_settings(grid.evaluation_settings(cfg, method, run))


def evaluation_only(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``eval.episodes`` and ``eval.shots``: recorded by train and evaluate jobs, read by
    neither's result (see :func:`job_config`)."""
    return sorted_settings(grid.evaluation_only(cfg))


def runtime_settings(cfg: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """Where and how a job runs: ``runtime`` and ``tracking``, with ``runtime.threads`` = the
    job's threads (what the profile's ``set-threads`` gave it)."""
    settings = sorted_settings(grid.runtime_settings(cfg))
    settings["runtime"]["threads"] = int(threads)
    return settings


def inherit_profile_resources(resource_settings: Any, rule: str, families: Sequence[str]) -> None:
    """Give a generated rule (``train_cells_3``) the ``--set-resources`` / ``--set-threads`` of
    the first of ``families`` a profile names (``train_cells``, else ``train``), unless the
    profile names ``rule`` itself. Call it before the rule is defined: Snakemake applies a
    profile's settings by exact rule name when it registers the rule, and the generated names
    depend on the grid, so no profile can list them. The parsed maps are also what Snakemake
    passes to the jobs it submits, so a cluster job sees the same resources."""
    for parsed in (resource_settings._parsed_overwrite_resources,
                   resource_settings._parsed_overwrite_threads):
        if rule in parsed:
            continue
        family = next((name for name in families if name in parsed), None)
        if family is not None:
            parsed[rule] = parsed[family]


# --- script side -----------------------------------------------------------------------------


def job_config(params: Any, rule: str = "job") -> Config:
    """The validated settings of a job: its ``settings`` param; the keys of its ``evaluation``
    param that ``settings`` lacks (``settings`` wins: an evaluation's ``eval.episodes`` is a
    rerun trigger there); then its ``runtime`` param."""
    settings = copy.deepcopy(dict(params.settings))
    for section, values in (params.get("evaluation") or {}).items():
        settings[section] = {**values, **settings.get(section, {})}
    settings.update(params.get("runtime") or {})
    return validate(settings, source=f"the params of rule {rule}")


def cell_configs(params: Any, rule: str = "job") -> list[Config]:
    """The validated settings of every cell of a grouped training job (rule ``train_cells_*``):
    its ``cells`` param (one run's settings each) completed as :func:`job_config` does."""
    class _Cell(dict):
        settings: Any

    out = []
    for settings in params.cells:
        cell = _Cell(evaluation=params.get("evaluation"), runtime=params.get("runtime"))
        cell.settings = settings
        out.append(job_config(cell, rule))
    return out


@contextlib.contextmanager
def _output_to(log_path: str | os.PathLike[str]) -> Iterator[Any]:
    """Redirect file descriptors 1 and 2 (Python, C extensions, subprocesses) into the log
    file for the duration; yield a handle on the terminal's stderr for the one error line."""
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    terminal = os.fdopen(os.dup(2), "w")
    with path.open("w") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)
            terminal.close()


@contextlib.contextmanager
def job(smk: Any) -> Iterator[Config]:
    """Run the body of one Snakemake job (``smk`` is the ``snakemake`` object of a script).

    Yields the job's validated settings; everything written to stdout/stderr and every log
    record goes to ``smk.log[0]``. A user's mistake (:func:`user_message`) becomes the CLI's
    one line and exit code 2; any other exception (a bug), and every error when
    ``SUBSPACE_FSL_DEBUG=1``, writes its traceback into the log and exits with 1.
    """
    from subspace_fsl.logs import setup_logging

    with _output_to(smk.log[0]) as terminal:
        setup_logging()
        try:
            yield job_config(smk.params, smk.rule)
        except Exception as exc:
            message = None if debug_enabled() else user_message(exc)
            if message is None:
                # printed here, not by the interpreter at exit, when the output is the terminal's
                traceback.print_exc()
                raise SystemExit(1) from None
            line = f"subspace-fsl {smk.rule}: error: {message}"
            print(line, file=sys.stderr)
            print(f"{line} (log: {smk.log[0]})", file=terminal)
            raise SystemExit(exit_code(exc)) from None
        else:
            log.info("%s done: %s", smk.rule, ", ".join(str(path) for path in smk.output))
