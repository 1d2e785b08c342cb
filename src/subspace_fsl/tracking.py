"""MLflow tracking: one experiment per data set, one run per trained configuration.

The store is a local SQLite file by default (``sqlite:///{results_dir}/mlflow.db``), so no
server is needed; on a cluster point ``tracking.uri`` (or ``MLFLOW_TRACKING_URI``) at an
``mlflow server``. Several processes may train and log at once:

- ``ensure_store(cfg)`` creates the database and the experiment once, under a file lock, so
  racing processes never migrate a fresh database or create the same experiment twice;
- every call to the store is retried with backoff when SQLite reports "database is locked"
  (MLflow also sets a 20 s busy timeout on its SQLite connections);
- each run logs through its own ``MlflowClient`` with explicit run ids (no global active run).

The id of a run lives in ``{run_dir}/mlflow_run.json``; a resumed training run and its later
evaluations log into that same run. ``tracking.enabled: false`` gives a ``NullTracker``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from subspace_fsl import __version__
from subspace_fsl.config import ConfigError, atomic_write_text

log = logging.getLogger(__name__)

T = TypeVar("T")

RUN_FILE = "mlflow_run.json"
RETRY_SECONDS = 120.0  # give up on a locked store after this long
_TRANSIENT_WORDS = ("locked", "busy", "temporarily unavailable", "unable to open database")


# --- where the store is ----------------------------------------------------------------------


def tracking_uri(cfg: Mapping[str, Any]) -> str:
    """The store's URI: env MLFLOW_TRACKING_URI, else ``tracking.uri``, else a SQLite file.

    ``file:`` stores (and bare paths, which MLflow reads as ``file:``) are refused: MLflow 3.13+
    no longer accepts them and they do not survive concurrent writers.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    uri = env or cfg["tracking"]["uri"]
    source = "MLFLOW_TRACKING_URI" if env else "tracking.uri"
    if not uri:
        db = (Path(cfg["results_dir"]) / "mlflow.db").resolve()
        return f"sqlite:///{db}"
    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):
        raise ConfigError(
            f"{source}={uri!r}: file stores are not supported (MLflow 3.13+ refuses them); use "
            f"sqlite:///ABSOLUTE/PATH/mlflow.db, or http(s):// for an mlflow server"
        )
    return uri


def check_reachable(uri: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds (per connection step) when an http(s) store does not
    answer, instead of sitting in MLflow's request retries; any HTTP answer counts. Other
    stores (sqlite, databricks) are not network services here and are not probed."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (e.g. 401, 404): reachable
    except (OSError, ValueError) as exc:  # URLError, refused, timed out, bad host
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"MLflow tracking server {uri} is unreachable within {timeout:g} s ({reason}); "
            f"start it, fix MLFLOW_TRACKING_URI / tracking.uri, or turn tracking off with "
            f"--set tracking.enabled=false"
        ) from None


def check_store(cfg: Mapping[str, Any]) -> None:
    """Before any work: the store's URI is valid and, for a server, answers in time."""
    if cfg["tracking"]["enabled"]:
        check_reachable(tracking_uri(cfg), float(cfg["tracking"]["connect_timeout_s"]))


def experiment_name(cfg: Mapping[str, Any]) -> str:
    """``tracking.experiment``, else the data set's name."""
    return cfg["tracking"]["experiment"] or cfg["dataset"]["name"]


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path("/" + path.lstrip("/")) if uri.startswith("sqlite:////") else Path(path)


def _artifact_location(uri: str, name: str) -> str | None:
    """For a SQLite store, artifacts go next to the database (MLflow would use ./mlruns)."""
    db = _sqlite_path(uri)
    if db is None:
        return None  # a server decides (its --default-artifact-root)
    return (db.resolve().parent / "mlartifacts" / name).as_uri()


# --- retries and locking ---------------------------------------------------------------------


def _is_transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _TRANSIENT_WORDS)


def with_retry(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a store call, retrying with jittered exponential backoff while the store is locked."""
    delay, deadline = 0.05, time.monotonic() + RETRY_SECONDS
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _is_transient(exc) or time.monotonic() > deadline:
                raise
            log.debug("MLflow store busy (%s); retrying in %.2f s", str(exc)[:80], delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock next to a SQLite database (no-op for other stores)."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = with_retry(client.get_experiment_by_name, name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            with_retry(client.restore_experiment, experiment.experiment_id)
        return experiment.experiment_id
    try:
        return with_retry(
            client.create_experiment, name, artifact_location=_artifact_location(uri, name)
        )
    except MlflowException as exc:
        # another process created it between our look-up and our create
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
        experiment = with_retry(client.get_experiment_by_name, name)
        if experiment is None:
            raise
        return experiment.experiment_id


def ensure_store(cfg: Mapping[str, Any]) -> str | None:
    """Create the store (database tables) and the experiment once; return the experiment id.

    Call it before fanning out jobs; it is also safe for racing processes to call it at once
    (a file lock serialises them on a SQLite store). None when tracking is disabled.
    """
    if not cfg["tracking"]["enabled"]:
        return None
    uri = tracking_uri(cfg)
    with _store_lock(uri):
        client = _client(uri)
        return _get_or_create_experiment(client, experiment_name(cfg), uri)


def write_marker(cfg: Mapping[str, Any], out: str | os.PathLike[str] | None = None
                 ) -> dict[str, Any]:
    """:func:`ensure_store`, then record what it set up in ``out`` (default
    ``paths.tracking_marker(cfg)``): the file every training job waits for."""
    from subspace_fsl import paths

    check_store(cfg)
    experiment_id = ensure_store(cfg)
    record = {"enabled": cfg["tracking"]["enabled"], "experiment_id": experiment_id,
              "experiment": experiment_name(cfg) if experiment_id else None,
              "uri": tracking_uri(cfg) if experiment_id else None}
    path = Path(out or paths.tracking_marker(cfg))
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    log.info("%s: %s", path, json.dumps(record))
    return record


# --- what a run records ----------------------------------------------------------------------


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings -> ``{"train.shot": "5", ...}`` (lists and nulls as their YAML-ish text)."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = (
                json.dumps(value) if isinstance(value, list | dict) or value is None else str(value)
            )
    return flat


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def default_tags(extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Package version and git commit, plus the caller's (data set stamp, device, ...)."""
    tags = {"subspace_fsl.version": __version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for key, value in (extra or {}).items():
        if value is not None:
            tags[key] = str(value)
    return tags


class NullTracker:
    """Tracking switched off: every call does nothing."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class RunTracker(NullTracker):
    """One MLflow run, addressed by id, logged through its own client with retries."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id
        self.client = _client(uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log settings; on a resumed run only the new ones (MLflow params are immutable)."""
        from mlflow.entities import Param

        logged = with_retry(self.client.get_run, self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))
        if changed:
            log.warning(
                "MLflow run %s keeps its first values of: %s", self.run_id, ", ".join(changed)
            )
        fresh = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        for start in range(0, len(fresh), 100):  # MLflow accepts at most 100 params per batch
            with_retry(self.client.log_batch, self.run_id, params=fresh[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if batch:
            with_retry(self.client.log_batch, self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if batch:
            with_retry(self.client.log_batch, self.run_id, tags=batch)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        with_retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        with_retry(self.client.set_terminated, self.run_id, status)

    def reopen(self) -> None:
        """Mark a resumed run as running again."""
        with_retry(self.client.update_run, self.run_id, "RUNNING")


def open_run(
    cfg: Mapping[str, Any], run_dir: str | os.PathLike[str], tags: Mapping[str, Any] | None = None
) -> NullTracker:
    """The MLflow run of ``run_dir``: the one recorded in ``{run_dir}/mlflow_run.json`` when the
    store still has it, else a new run (recorded there). A ``NullTracker`` when disabled."""
    if not cfg["tracking"]["enabled"]:
        return NullTracker()
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    experiment_id = ensure_store(cfg)
    record_path = Path(run_dir) / RUN_FILE
    client = _client(uri)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("uri") == uri:
            try:
                run = with_retry(client.get_run, record["run_id"])
                if run.info.lifecycle_stage == "active":
                    tracker = RunTracker(uri, record["run_id"])
                    if tags:
                        tracker.set_tags(tags)
                    return tracker
            except MlflowException:
                log.warning(
                    "MLflow run %s is gone from %s; starting a new one", record["run_id"], uri
                )
    run_tags = {"mlflow.runName": Path(run_dir).name, "run_dir": str(Path(run_dir).resolve())}
    run_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    run = with_retry(client.create_run, experiment_id, tags=run_tags, run_name=Path(run_dir).name)
    record = {"uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return RunTracker(uri, run.info.run_id)


def recorded_run_id(run_dir: str | os.PathLike[str]) -> str | None:
    """The MLflow run id recorded in a run directory, if any."""
    record_path = Path(run_dir) / RUN_FILE
    if not record_path.is_file():
        return None
    return json.loads(record_path.read_text()).get("run_id")
