"""MLflow tracking: URIs, run records, and several processes logging to one fresh store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient
from waiting import HANG_S

from subspace_fsl.config import ConfigError, load_config
from subspace_fsl.tracking import (
    NullTracker,
    RunTracker,
    ensure_store,
    flatten,
    open_run,
    recorded_run_id,
    tracking_uri,
)


def config(tmp_path: Path, *overrides: str) -> dict:
    return load_config(
        None, [f"results_dir={tmp_path / 'results'}", "dataset.name=birds", *overrides]
    )


def test_default_uri_is_an_absolute_sqlite_file_and_env_wins(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config(tmp_path)
    assert tracking_uri(cfg) == f"sqlite:///{(tmp_path / 'results' / 'mlflow.db').resolve()}"
    monkeypatch.chdir(tmp_path)
    relative = load_config(None, ["results_dir=out"])
    assert tracking_uri(relative) == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(cfg) == "http://tracking.example:5000"


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns", "/abs/mlruns"])
def test_file_stores_are_refused_with_the_key(tmp_path, monkeypatch, uri) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"tracking\.uri=.*file stores are not supported"):
        tracking_uri(config(tmp_path, f"tracking.uri={uri}"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        tracking_uri(config(tmp_path))


def test_flatten_gives_dotted_keys() -> None:
    flat = flatten(
        {
            "train": {"shot": 5, "lr": 0.001},
            "split": {"counts": [1, 2, 3]},
            "dataset": {"root": None},
        }
    )
    assert flat == {
        "train.shot": "5",
        "train.lr": "0.001",
        "split.counts": "[1, 2, 3]",
        "dataset.root": "null",
    }


def test_disabled_tracking_touches_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config(tmp_path, "tracking.enabled=false")
    assert ensure_store(cfg) is None
    tracker = open_run(cfg, tmp_path / "run")
    assert type(tracker) is NullTracker
    tracker.log_metrics({"x": 1.0}, step=1)
    tracker.finish()
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "run").exists()


def test_a_run_directory_keeps_its_run_and_artifacts_land_next_to_the_db(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = config(tmp_path)
    run_dir = tmp_path / "runs" / "w5_k1"
    first = open_run(cfg, run_dir, tags={"device": "cpu"})
    assert isinstance(first, RunTracker)
    first.log_params(flatten({"train": {"shot": 1}}))
    first.log_metrics({"train_loss": 1.5}, step=10)
    (tmp_path / "summary.json").write_text("{}")
    first.log_artifact(tmp_path / "summary.json", "eval/novel")
    first.finish()
    again = open_run(cfg, run_dir)  # a later evaluation, or a resumed training run
    assert again.run_id == first.run_id == recorded_run_id(run_dir)
    again.log_params(flatten({"train": {"shot": 1, "way": 5}}))  # re-logging is harmless
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(first.run_id)
    assert run.info.run_name == "multisubspace/w5_k1"  # outside the layout: model.head
    assert run.data.params == {"train.shot": "1", "train.way": "5"}
    assert run.data.tags["device"] == "cpu"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "birds"
    assert experiment.artifact_location.startswith((tmp_path / "results" / "mlartifacts").as_uri())
    assert [a.path for a in client.list_artifacts(first.run_id, "eval/novel")] == [
        "eval/novel/summary.json"
    ]
    assert not (tmp_path / "mlruns").exists()
    assert json.loads((run_dir / "mlflow_run.json").read_text())["uri"] == tracking_uri(cfg)


WORKER = textwrap.dedent(
    """
    import sys
    from subspace_fsl.config import load_config
    from subspace_fsl.tracking import open_run, flatten
    results, run_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = load_config(None, [f"results_dir={results}", "dataset.name=race"])
    tracker = open_run(cfg, run_dir, tags={"worker": run_dir})
    tracker.log_params(flatten(cfg))
    for step in range(steps):
        tracker.log_metrics({"train_loss": 1.0 / (step + 1), "train_acc": step / steps,
                             "l1": 0.5, "l2": 0.25}, step=step)
    tracker.finish()
    """
)


def test_four_processes_log_to_one_fresh_store_and_lose_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results, steps, workers = tmp_path / "results", 40, 4
    # no ensure_store first: the racing processes must create the database and experiment safely
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(results), str(tmp_path / f"run{i}"), str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(workers)
    ]
    outputs = [p.communicate(timeout=HANG_S)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, "\n".join(outputs)
    cfg = config(tmp_path, "dataset.name=race")
    client = MlflowClient(tracking_uri(cfg))
    experiments = [e for e in client.search_experiments() if e.name == "race"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert len(runs) == workers
    assert {r.info.run_id for r in runs} == {
        recorded_run_id(tmp_path / f"run{i}") for i in range(workers)
    }
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["train.shot"] == "5"
        for key in ("train_loss", "train_acc", "l1", "l2"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(steps)), key


def test_a_folder_whose_record_is_lost_finds_its_run_by_tag(tmp_path, monkeypatch) -> None:
    """The record file deleted (or written for another store, or never written because the job
    died right after creating the run): the store's run_dir tag still names the run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config(tmp_path)
    run_dir = tmp_path / "results" / "runs" / "birds" / "protonet" / "w5_k1"
    first = open_run(cfg, run_dir)
    (run_dir / "mlflow_run.json").unlink()
    assert open_run(cfg, run_dir).run_id == first.run_id
    (run_dir / "mlflow_run.json").write_text(json.dumps({"uri": "sqlite:///other.db",
                                                         "run_id": "0" * 32}))
    assert open_run(cfg, run_dir).run_id == first.run_id == recorded_run_id(run_dir)
    client = MlflowClient(tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name("birds").experiment_id])
    assert [r.info.run_name for r in runs] == ["protonet/w5_k1"]  # the method from the layout
    assert runs[0].data.tags["method"] == "protonet"


def test_a_create_retried_after_a_late_lock_error_makes_no_second_run(tmp_path, monkeypatch):
    """The store did the create but reported "database is locked" (a late commit error, a
    server reply lost): the retry finds the folder's run instead of creating another."""
    from subspace_fsl.tracking import _create_run_once

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config(tmp_path)
    experiment_id = ensure_store(cfg)

    class LateLockClient(MlflowClient):  # a real store that fails after the first create
        failures = 1

        def create_run(self, *args, **kwargs):
            run = super().create_run(*args, **kwargs)
            if LateLockClient.failures:
                LateLockClient.failures -= 1
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return run

    client = LateLockClient(tracking_uri(cfg))
    folder = str(tmp_path / "runs" / "x")
    tags = {"mlflow.runName": "m/x", "run_dir": folder}
    run_id = _create_run_once(client, experiment_id, tags, folder)
    runs = client.search_runs([experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]


def test_a_data_set_input_logged_by_two_jobs_at_once_is_retried_not_fatal() -> None:
    """The race of two train jobs recording the same new data set (seen in the tiny
    workflow): sqlite's UNIQUE failure on the datasets table is retried like a lock."""
    import sqlite3

    from subspace_fsl.tracking import with_retry

    calls = []

    def log_inputs() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.IntegrityError(
                "UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
                "datasets.digest")
        return "logged"

    assert with_retry(log_inputs) == "logged" and len(calls) == 2
    with pytest.raises(sqlite3.IntegrityError):  # another constraint is a real error
        with_retry(lambda: (_ for _ in ()).throw(
            sqlite3.IntegrityError("UNIQUE constraint failed: runs.run_uuid")))
