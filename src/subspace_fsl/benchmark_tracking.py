"""The benchmark in MLflow: one parent run per data set and workflow configuration.

``init_benchmark`` (the ``init-tracking`` stage, before the training jobs fan out) creates the
store and the experiment, writes the experiment's description (``mlflow.note.content``) and
tags (data set, split rule, protocol, method), presets a runs-table view (below), and finds or
creates the parent run of this configuration: tagged ``subspace_fsl.benchmark = <key>`` (a
digest of every result setting, the grid included), holding the grid as it ran as ``grid.*``
params. Its id goes into ``tracking/{d}.json``; each training run's ``open_run`` reads it and
becomes a child (``mlflow.parentRunId``), so the parent need not be active while children run.

``log_selection_and_tables`` (the ``tables`` stage) and ``log_plots`` (the ``plots`` stage)
attach the validation choice, every table (CSV, Markdown, LaTeX; ``paired`` holds the paired
tests) and every plot to the parent, log the main table's numbers as metrics
(``main/{method}/w{way}_k{shot}_acc`` and ``_ci95``) and the chosen S and lambdas as tags.

What MLflow 3.17 lets a project preset in the UI: not the default columns of the runs table
(they live in the browser's local storage), but a *shared view*: an experiment tag
``mlflow.sharedViewState.<key>`` holding the view's JSON (selected columns, sort order, search
filter) that the UI applies when the page is opened with ``?viewStateShareKey=<key>``
(:func:`view_url`). ``init-tracking`` prints that address.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from subspace_fsl import grid, paths, targets, tracking
from subspace_fsl.tracking import with_retry

log = logging.getLogger(__name__)

VIEW_KEY = "benchmark"
SHARED_VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: the runs table of the preset view: method, shot, S, lambdas, seed, val and novel accuracy
VIEW_COLUMNS = (
    ("tags", tracking.METHOD_TAG), ("params", "train.way"), ("params", "train.shot"),
    ("params", "model.n_subspaces"), ("params", "train.lambda1"), ("params", "train.lambda2"),
    ("params", "train.seed"), ("metrics", "best_val_acc"), ("metrics", "val_eval_acc"),
    ("metrics", "novel_acc"), ("metrics", "novel_ci95"), ("attributes", "Models"),
)
#: only the training runs (the parent is the container), best novel accuracy first
VIEW_FILTER = f"tags.`{tracking.KIND_TAG}` = 'training'"
VIEW_ORDER = "metrics.`novel_acc`"


def column_key(kind: str, name: str) -> str:
    """The runs table's own column id (``params.`train.shot```), as the UI builds it."""
    return f"{kind}.`{name}`"


def view_state() -> dict[str, Any]:
    columns = [column_key(k, n) for k, n in VIEW_COLUMNS]
    return {
        "selectedColumns": columns,
        "columnOrder": columns,
        "searchFilter": VIEW_FILTER,
        "orderByKey": VIEW_ORDER,
        "orderByAsc": False,
        "runsHiddenMode": "SHOW_ALL",
    }


#: where ``mlflow ui --backend-store-uri <store>`` serves a file or database store by default
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(uri: str) -> str:
    """The UI serving the store ``uri``: a tracking server serves its own UI at its address;
    a file or database store is read by ``mlflow ui`` at :data:`LOCAL_UI`."""
    return uri if uri.startswith(("http://", "https://")) else LOCAL_UI


def view_url(experiment_id: str, base: str = LOCAL_UI) -> str:
    """The preset view's address in an ``mlflow ui`` / ``mlflow server`` at ``base``."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def benchmark_key(cfg: Mapping[str, Any]) -> str:
    """Digest of every result setting (the grid included): one parent run per value."""
    text = json.dumps(grid.result_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def description(cfg: Mapping[str, Any]) -> str:
    """The experiment's Markdown description (shown above its runs)."""
    from subspace_fsl.report import protocol_description, split_description

    g = cfg["grid"]
    baselines = ", ".join(grid.baseline_names(cfg)) or "none"
    return (
        f"**Few-shot benchmark on `{cfg['dataset']['name']}`** "
        f"(source {cfg['dataset']['source']}) of `{grid.method_name(cfg)}` "
        f"(multiple feature subspaces, CN 115861720 B) against baselines: {baselines}.\n\n"
        f"- {split_description(cfg)}\n- protocol: {protocol_description(cfg)}\n"
        f"- grid: way {g['way']}, shot {g['shot']}, S {g['n_subspaces']}, "
        f"λ1 {g['lambda1']}, λ2 {g['lambda2']}, seeds {g['seeds']}\n\n"
        "Each benchmark (data set + workflow configuration) is one parent run "
        f"(`{tracking.KIND_TAG} = benchmark`) holding the grid, the validation choice, the "
        "tables, paired tests and plots; its training runs (named `method/w…_k…_S…`) are its "
        "children, with `novel_acc` / `novel_ci95` (novel classes) and `val_eval_acc` "
        "(validation, used for the choice) as metrics, the model and the data set.\n\n"
        f"Open the preset view: add `?viewStateShareKey={VIEW_KEY}` to this page's address."
    )


def experiment_tags(cfg: Mapping[str, Any]) -> dict[str, str]:
    from subspace_fsl.report import protocol_description, split_description

    return {
        "mlflow.note.content": description(cfg),
        "dataset": str(cfg["dataset"]["name"]),
        "dataset.source": str(cfg["dataset"]["source"]),
        "split_rule": split_description(cfg),
        "protocol": protocol_description(cfg),
        "method": grid.method_name(cfg),
        SHARED_VIEW_TAG: json.dumps(view_state()),
    }


def _find_parent(client: Any, experiment_id: str, key: str) -> Any | None:
    found = with_retry(
        client.search_runs, [experiment_id],
        filter_string=(f"tags.`{tracking.BENCHMARK_TAG}` = '{key}' and "
                       f"tags.`{tracking.KIND_TAG}` = 'benchmark'"),
        order_by=["attributes.start_time ASC"], max_results=1,
    )
    return found[0] if found else None


def init_benchmark(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Store, experiment (description, tags, preset view) and the parent run; returns the
    ``tracking/{d}.json`` record (``parent_run_id``, ``benchmark``, ``view``...)."""
    if not cfg["tracking"]["enabled"]:
        return {"enabled": False, "experiment_id": None, "experiment": None, "uri": None}
    uri = tracking.tracking_uri(cfg)
    experiment_id = tracking.ensure_store(cfg)
    client = tracking._client(uri)
    for name, value in experiment_tags(cfg).items():
        with_retry(client.set_experiment_tag, experiment_id, name, value)
    key = benchmark_key(cfg)
    with tracking._store_lock(uri):
        parent = _find_parent(client, experiment_id, key)
        if parent is None:
            name = f"benchmark/{cfg['dataset']['name']}-{key[:8]}"
            parent = with_retry(client.create_run, experiment_id, run_name=name, tags={
                tracking.BENCHMARK_TAG: key, tracking.KIND_TAG: "benchmark",
                "mlflow.runName": name, **tracking.default_tags()})
    parent_id = parent.info.run_id
    runner = tracking.RunTracker(uri, parent_id)
    runner.log_params({f"grid.{k}": v for k, v in tracking.flatten(cfg["grid"]).items()})
    runner.log_params({k: v for k, v in tracking.run_params(cfg).items()
                       if not k.startswith(("train.way", "train.shot", "train.lambda",
                                            "train.seed", "model.n_subspaces", "model.head"))})
    runner.set_tags({"dataset": cfg["dataset"]["name"],
                     "mlflow.note.content": description(cfg), **tracking.runtime_tags(cfg)})
    # a container: finished at once; the tables and plots stages still log into it
    with_retry(client.set_terminated, parent_id, "FINISHED")
    return {"enabled": True, "experiment_id": experiment_id,
            "experiment": tracking.experiment_name(cfg), "uri": uri,
            "parent_run_id": parent_id, "benchmark": key,
            "view": view_url(experiment_id, ui_base(uri))}


def write_marker(cfg: Mapping[str, Any], out: str | Path | None = None) -> dict[str, Any]:
    """Check the store (bounded), :func:`init_benchmark`, then record what it set up in
    ``out`` (default ``paths.tracking_marker(cfg)``): the file every training job reads."""
    from subspace_fsl.config import atomic_write_text

    tracking.check_store(cfg)
    record = init_benchmark(cfg)
    path = Path(out or paths.tracking_marker(cfg))
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    log.info("%s: %s", path, json.dumps(record))
    return record


def _parent(cfg: Mapping[str, Any]) -> tracking.RunTracker | None:
    if not cfg["tracking"]["enabled"]:
        return None
    record = tracking.benchmark_record(cfg)
    if not record or not record.get("parent_run_id"):
        log.warning("no benchmark parent run recorded in %s; run init-tracking first",
                    paths.tracking_marker(cfg))
        return None
    return tracking.RunTracker(record["uri"], record["parent_run_id"])


def _adopt_children(cfg: Mapping[str, Any], parent: tracking.RunTracker) -> None:
    """Every run of the grid under this parent (a run trained under an earlier configuration
    that this one reuses is moved here, so the parent's children are exactly its grid)."""
    from mlflow.exceptions import MlflowException

    for run in grid.all_runs(cfg):
        run_id = tracking.recorded_run_id(paths.run_dir(cfg, run.method, run.name))
        if run_id is None:
            continue
        try:
            tracking.RunTracker(parent.uri, run_id).set_tags(
                {tracking.PARENT_TAG: parent.run_id,
                 tracking.BENCHMARK_TAG: tracking.benchmark_record(cfg)["benchmark"]})
        except MlflowException:
            log.warning("MLflow run %s of %s/%s is gone", run_id, run.method, run.name)


def _log_files(parent: tracking.RunTracker, files: Iterable[Path], folder: str) -> None:
    for path in files:
        parent.log_artifact(path, folder)


def log_selection_and_tables(cfg: Mapping[str, Any], tables: Iterable[str | Path]) -> None:
    """Selection (file, and every method's chosen settings as tags
    ``selection.{method}.w{way}_k{shot}_S{S}.{setting}`` and
    ``selection.{method}.w{way}_k{shot}.S``), every table, the main table's numbers as
    metrics, into the benchmark's parent run."""
    import pandas as pd

    from subspace_fsl.results import CONFIG_COLUMNS
    from subspace_fsl.selection import read_selection

    parent = _parent(cfg)
    if parent is None:
        return
    _adopt_children(cfg, parent)
    selection_file = paths.selection_path(cfg)
    if selection_file.is_file():
        parent.log_artifact(selection_file, "selection")
        tags = {}
        for _, row in read_selection(selection_file).iterrows():
            way_shot = f"selection.{row['method']}.w{row['way']}_k{row['shot']}"
            cell = f"{way_shot}_S{row['n_subspaces']}"
            for setting in CONFIG_COLUMNS:
                if setting != "n_subspaces":
                    value = row[setting]
                    tags[f"{cell}.{setting}"] = (paths.format_number(value)
                                                 if setting in ("lambda1", "lambda2", "tau")
                                                 else str(value))
            if row["best_s"]:
                tags[f"{way_shot}.S"] = str(row["n_subspaces"])
        parent.set_tags(tags)
    files = [Path(p) for p in tables]
    _log_files(parent, files, "tables")
    main = next((p for p in files if p.name == "main.csv"), None)
    if main is not None:
        table = pd.read_csv(main)
        metrics = targets.parent_metrics(table)  # the cross-domain targets' cells
        for row in targets.novel_rows(table).itertuples():
            name = f"main/{row.method}/w{row.way}_k{row.shot}"
            metrics[f"{name}_acc"] = row.mean
            metrics[f"{name}_ci95"] = row.ci95
        parent.log_metrics(metrics)


def log_plots(cfg: Mapping[str, Any], plots: Iterable[str | Path]) -> None:
    """Every plot (PNG and PDF) into the parent run's ``plots`` folder."""
    parent = _parent(cfg)
    if parent is not None:
        _log_files(parent, [Path(p) for p in plots], "plots")


def publish_tables(cfg: Mapping[str, Any]) -> list[Path]:
    """The tables stage: every table (``report.write_tables``), then the selection, tables
    and main numbers logged into the benchmark's parent run."""
    from subspace_fsl.report import write_tables

    written = write_tables(cfg)
    log_selection_and_tables(cfg, written)
    return written


def publish_plots(cfg: Mapping[str, Any]) -> list[Path]:
    """The plots stage: every plot (``report.write_plots``), logged into the parent run."""
    from subspace_fsl.report import write_plots

    written = write_plots(cfg)
    log_plots(cfg, written)
    return written
