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
tests) and every plot to the parent, log every cell of the main table as a metric equal to it
(``main/{target}/{method}/w{way}_k{shot}_eval{eval_shot}_acc_pct`` and ``_ci95_pct``) and the
chosen S and lambdas as tags; every training run gets the tags ``chosen`` (``true`` on each
method's validation choice) and ``cell`` (its settings that vary in the grid), and the chosen
runs' models are registered with the alias ``chosen``.

Units: every accuracy metric of a run (``novel_acc``, ``val_eval_acc``, ``val_acc``...) is a
fraction (0-1), as the run folders' ``summary.json``; a metric in percent says so by its name
(``_pct``): the parent's ``main/...`` metrics, which are the tables' percentages.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from subspace_fsl import grid, paths, targets, tracking
from subspace_fsl.tracking import with_retry

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

VIEW_KEY = "benchmark"
SHARED_VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: a training run's tags set by the tables stage: ``chosen`` (``true`` on the runs of the
#: configuration each method's validation accuracy chose, all its seeds; ``false`` on the
#: others) and ``cell`` (the run's grid settings that vary in this grid, e.g. ``S=2 λ2=0.1``:
#: what tells it from its neighbours, whose names share a long prefix)
CHOSEN_TAG = "chosen"
CELL_TAG = "cell"
#: the alias of the chosen models' versions in the model registry
CHOSEN_ALIAS = "chosen"
#: the grid settings a run may vary: (``RunKey`` field, run param, short label)
SETTINGS = (
    ("way", "train.way", "way"), ("shot", "train.shot", "shot"),
    ("n_subspaces", "model.n_subspaces", "S"), ("lambda1", "train.lambda1", "λ1"),
    ("lambda2", "train.lambda2", "λ2"), ("tau", "model.tau", "τ"),
    ("learn_tau", "model.learn_tau", "learn τ"), ("distance", "model.distance", "distance"),
    ("embed", "model.embed", "embed"), ("augment", "train.augment", "augment"),
    ("seed", "train.seed", "seed"),
)
#: metrics of the preset view, first (the sort column among them: visible at 1600 px)
VIEW_METRICS = ("novel_acc", "novel_ci95", "val_eval_acc")
#: only the training runs (the parent is the container), best novel accuracy first
VIEW_FILTER = f"tags.`{tracking.KIND_TAG}` = 'training'"
VIEW_ORDER = "metrics.`novel_acc`"
#: the UI opens in the machine-learning mode (runs, models), not the GenAI one (traces)
WORKFLOW_TYPE = "machine_learning"
EXPERIMENT_KIND = "custom_model_development"


def column_key(kind: str, name: str) -> str:
    """The runs table's own column id (``params.`train.shot```), as the UI builds it."""
    return f"{kind}.`{name}`"


def varying_settings(cfg: Mapping[str, Any]) -> list[str]:
    """The ``RunKey`` fields (:data:`SETTINGS` order) taking more than one value over the
    grid's runs, every method together."""
    keys = [run.key for run in grid.all_runs(cfg)]
    return [field for field, _, _ in SETTINGS
            if len({getattr(k, field) for k in keys}) > 1]


def view_columns(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The preset view's columns: chosen, method, cell, the novel and validation accuracy,
    then way, shot and every setting the grid varies, the best validation check, Models."""
    params = dict((field, param) for field, param, _ in SETTINGS)
    shown = ["way", "shot", *(f for f in varying_settings(cfg) if f not in ("way", "shot"))]
    return [("tags", CHOSEN_TAG), ("tags", tracking.METHOD_TAG), ("tags", CELL_TAG),
            *(("metrics", m) for m in VIEW_METRICS),
            *(("params", params[f]) for f in shown),
            ("metrics", "best_val_acc"), ("attributes", "Models")]


def view_state(cfg: Mapping[str, Any]) -> dict[str, Any]:
    columns = [column_key(k, n) for k, n in view_columns(cfg)]
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
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={VIEW_KEY}&workflowType={WORKFLOW_TYPE}")


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
        f"The runs tagged `{CHOSEN_TAG} = true` are each method's validation choice (their "
        f"models carry the registry alias `{CHOSEN_ALIAS}`). Open the preset view: add "
        f"`?viewStateShareKey={VIEW_KEY}&workflowType={WORKFLOW_TYPE}` to this page's address."
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
        "mlflow.experimentKind": EXPERIMENT_KIND,
        SHARED_VIEW_TAG: json.dumps(view_state(cfg)),
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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return bool(a) == bool(b)
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return bool(np.isclose(float(a), float(b)))
    return str(a) == str(b)


def chosen_runs(cfg: Mapping[str, Any], selection: pd.DataFrame) -> list[grid.Run]:
    """The runs (every seed) of the configuration the selection chose per method and
    (way, shot): its ``best_s`` rows, matched on every ``CONFIG_COLUMNS`` setting."""
    from subspace_fsl.results import CONFIG_COLUMNS

    best = selection[selection["best_s"].astype(bool)]
    chosen = []
    for run in grid.all_runs(cfg):
        key = run.key
        here = best[(best["method"] == run.method) & (best["way"] == key.way)
                    & (best["shot"] == key.shot)]
        if any(all(_same(row[c], getattr(key, c)) for c in CONFIG_COLUMNS)
               for _, row in here.iterrows()):
            chosen.append(run)
    return chosen


def cell_text(key: paths.RunKey, varying: Iterable[str]) -> str:
    """The settings of ``key`` that vary in the grid, as ``S=2 λ1=0.1 λ2=0 seed=0``."""
    labels = {field: label for field, _, label in SETTINGS}
    parts = []
    for field in varying:
        value = getattr(key, field)
        text = paths.format_number(value) if isinstance(value, float) else str(value)
        parts.append(f"{labels[field]}={text}")
    return " ".join(parts)


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it is missing (None or NaN: a column only some rows fill)."""
    return default if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _target_of(cfg: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """The data set a main-table row was evaluated on: its ``target`` column, or the
    cross-domain target named by ``evaluated_on`` (``target-{name}``), else the source."""
    for column in ("target", "evaluated_on"):
        value = _given(row.get(column), None)
        if isinstance(value, str) and value.startswith(targets.PREFIX):
            return value.removeprefix(targets.PREFIX)
        if column == "target" and value is not None:
            return str(value)
    return str(cfg["dataset"]["name"])


def main_metrics(cfg: Mapping[str, Any], main: pd.DataFrame) -> dict[str, float]:
    """The main table's cells as the parent's metrics, keyed by all that tells them apart:
    ``main/{target}/{method}/w{way}_k{shot}_eval{eval_shot}_acc_pct`` and ``_ci95_pct`` (in
    %, as the table): ``target`` is the data set of a cross-domain row (:func:`_target_of`),
    else the source data set; ``eval_shot`` the evaluation's shot (``eval.shots``; the
    training shot where the table has no such column); ``_evalway{n}`` is added where a
    target is evaluated at another way than the training one."""
    metrics = {}
    for row in main.to_dict("records"):
        target = _target_of(cfg, row)
        eval_shot = int(_given(row.get("eval_shot"), row["shot"]))
        name = (f"main/{target}/{row['method']}/w{int(row['way'])}_k{int(row['shot'])}"
                f"_eval{eval_shot}")
        eval_way = int(_given(row.get("eval_way"), row["way"]))
        if eval_way != int(row["way"]):  # a target with fewer classes than the training way
            name += f"_evalway{eval_way}"
        for column in ("mean", "ci95"):
            value = float(row[column])
            if np.isfinite(value):
                metrics[f"{name}_{'acc' if column == 'mean' else column}_pct"] = value
    return metrics


def _register_cell(client: Any, cfg: Mapping[str, Any], name: str,
                   runs: list[tuple[str, grid.Run]]) -> None:
    """One registered model ``name``: a version per chosen run (once), alias on the first
    seed's."""
    from subspace_fsl.mlflow_model import run_model

    first = runs[0][1]
    if not with_retry(client.search_registered_models, f"name = '{name}'"):
        with_retry(client.create_registered_model, name, tags={
            "dataset": str(cfg["dataset"]["name"]), tracking.METHOD_TAG: first.method},
            description=f"{first.method} at the settings chosen on validation "
                        f"({first.key.way}-way {first.key.shot}-shot)")
    versions = []
    for run_id, run in sorted(runs, key=lambda r: r[1].key.seed):
        found = with_retry(client.search_model_versions,
                           f"name = '{name}' and run_id = '{run_id}'")
        if not found:
            model = run_model(client, run_id)
            if model is None:
                continue
            found = [with_retry(client.create_model_version, name, f"models:/{model.model_id}",
                                run_id=run_id, model_id=model.model_id,
                                tags={"run": run.name})]
        versions.append(found[0].version)
    if versions:
        with_retry(client.set_registered_model_alias, name, CHOSEN_ALIAS, versions[0])


def _register_chosen(parent: tracking.RunTracker, cfg: Mapping[str, Any],
                     chosen: Mapping[str, grid.Run]) -> None:
    """Every chosen run's logged model as a version of the registered model
    ``{data set}-{method}-w{way}_k{shot}`` (once per run), the alias :data:`CHOSEN_ALIAS` on
    its first seed's; a store without a registry logs a warning."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # the registry of this store (MLflow's default registry is another, ./mlflow.db)
    client = MlflowClient(parent.uri, registry_uri=parent.uri)
    by_cell: dict[str, list[tuple[str, grid.Run]]] = {}
    for run_id, run in chosen.items():
        name = f"{cfg['dataset']['name']}-{run.method}-w{run.key.way}_k{run.key.shot}"
        by_cell.setdefault(name, []).append((run_id, run))
    try:
        # a models:/ source is resolved in the global store: this one
        with tracking.global_store(parent.uri):
            for name, runs in by_cell.items():
                _register_cell(client, cfg, name, runs)
    except MlflowException as exc:
        log.warning("the chosen models are not registered (%s)", exc)


def log_selection_and_tables(cfg: Mapping[str, Any], tables: Iterable[str | Path]) -> None:
    """Selection (file, and every method's chosen settings as tags
    ``selection.{method}.w{way}_k{shot}_S{S}.{setting}`` and
    ``selection.{method}.w{way}_k{shot}.S``), the training runs' ``chosen`` and ``cell`` tags,
    the chosen models in the registry, every table, and the main table's cells as metrics
    (:func:`main_metrics`), into the benchmark's parent run."""
    from subspace_fsl.results import CONFIG_COLUMNS
    from subspace_fsl.selection import read_selection

    parent = _parent(cfg)
    if parent is None:
        return
    _adopt_children(cfg, parent)
    selection_file = paths.selection_path(cfg)
    if selection_file.is_file():
        parent.log_artifact(selection_file, "selection")
        selection = read_selection(selection_file)
        tags = {}
        for _, row in selection.iterrows():
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
        _tag_children(cfg, parent, chosen_runs(cfg, selection))
    files = [Path(p) for p in tables]
    _log_files(parent, files, "tables")
    main = next((p for p in files if p.name == "main.csv"), None)
    if main is not None:
        import pandas as pd

        parent.log_metrics(main_metrics(cfg, pd.read_csv(main)))


def _tag_children(cfg: Mapping[str, Any], parent: tracking.RunTracker,
                  chosen: list[grid.Run]) -> None:
    """``chosen`` and ``cell`` on every training run of the grid, its novel and validation
    metrics on its logged model (``mlflow_model.log_model_metrics``); the chosen ones'
    models registered (:func:`_register_chosen`)."""
    from mlflow.exceptions import MlflowException

    from subspace_fsl.mlflow_model import log_model_metrics

    varying = varying_settings(cfg)
    chosen_ids = {}
    for run in grid.all_runs(cfg):
        run_id = tracking.recorded_run_id(paths.run_dir(cfg, run.method, run.name))
        if run_id is None:
            continue
        is_chosen = run in chosen
        try:
            tracking.RunTracker(parent.uri, run_id).set_tags(
                {CHOSEN_TAG: str(is_chosen).lower(), CELL_TAG: cell_text(run.key, varying)})
            log_model_metrics(parent.client, run_id)
        except MlflowException:
            continue
        if is_chosen:
            chosen_ids[run_id] = run
    _register_chosen(parent, cfg, chosen_ids)


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
