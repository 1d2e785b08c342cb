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
evaluations log into that same run. The store is the source of truth, though: every run carries
its folder as the ``run_dir`` tag and ``open_run`` looks it up there (under the store lock)
before creating one, so a lost or stale record never makes a second run for one folder.

Each training run is the child (``mlflow.parentRunId``) of its benchmark's parent run, which
``init-tracking`` creates and records in ``tracking/{d}.json`` (``subspace_fsl.benchmark``);
children are named ``{method}/{run}``. What a run logs (params, tags, the data set, the model,
system metrics, the train log) is built here (``run_params``, ``log_training_start``,
``log_evaluation``; the model: ``mlflow_model.log_best_model``) so the engine calls one
function per stage.
``tracking.enabled: false`` gives a ``NullTracker``.
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
TRAIN_LOG = "train.log"
SYSTEM_METRICS_INTERVAL_S = 5.0
#: tags that tie runs together: a child's folder, its method, and the benchmark it belongs to
RUN_DIR_TAG, METHOD_TAG, BENCHMARK_TAG, KIND_TAG = (
    "run_dir", "method", "subspace_fsl.benchmark", "subspace_fsl.kind")
PARENT_TAG = "mlflow.parentRunId"
#: set on a run whose folder was started afresh because its settings changed
SUPERSEDED_TAG = "subspace_fsl.superseded"
RETRY_SECONDS = 120.0  # give up on a locked store after this long
_TRANSIENT_WORDS = ("locked", "busy", "temporarily unavailable", "unable to open database",
                    # two jobs logging the same new data set input at once: MLflow looks the
                    # (experiment, name, digest) row up, then inserts it; the loser's retry
                    # finds the winner's row
                    "unique constraint failed: datasets.")


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


#: an MLflow REST call every tracking server answers with JSON (the experiment, or the error
#: RESOURCE_DOES_NOT_EXIST): what tells an MLflow server from any other web server
PROBE_PATH = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


def _probe(uri: str, timeout: float) -> None:
    """One MLflow API call; ``ConfigError`` when the answer is not MLflow's, OSError when
    there is none."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}{PROBE_PATH}", timeout=timeout) as reply:
            status, body = reply.status, reply.read(65536)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # an authenticating front: MLflow's client sends the credentials
        status, body = exc.code, exc.read(65536)
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        answer = None
    if not isinstance(answer, dict) or not ({"experiment", "error_code"} & answer.keys()):
        raise ConfigError(
            f"{uri} answers HTTP {status} but is not an MLflow tracking server (GET "
            f"{PROBE_PATH.split('?')[0]} is not MLflow's JSON); fix MLFLOW_TRACKING_URI / "
            f"tracking.uri, or turn tracking off with --set tracking.enabled=false"
        )


def check_reachable(uri: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds (per connection step) when an http(s) store does not
    answer, instead of sitting in MLflow's request retries, or answers but is not MLflow
    (one MLflow API call, :data:`PROBE_PATH`). Other stores (sqlite, databricks) are not
    network services here and are not probed."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        _probe(uri, timeout)
    except (OSError, ValueError) as exc:  # URLError, refused, timed out, bad host
        if isinstance(exc, ConfigError):
            raise
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"MLflow tracking server {uri} is unreachable within {timeout:g} s ({reason}); "
            f"start it, fix MLFLOW_TRACKING_URI / tracking.uri, or turn tracking off with "
            f"--set tracking.enabled=false"
        ) from None


def check_store(cfg: Mapping[str, Any]) -> None:
    """Before any work: the store's URI is valid and, for a server, answers in time as an
    MLflow server; MLflow's HTTP retries are bounded by ``tracking.retry_s``."""
    if cfg["tracking"]["enabled"]:
        bound_http_retries(cfg)
        check_reachable(tracking_uri(cfg), float(cfg["tracking"]["connect_timeout_s"]))


def bound_http_retries(cfg: Mapping[str, Any]) -> None:
    """MLflow's HTTP timeout and retries (``MLFLOW_HTTP_REQUEST_*``; its defaults retry for
    about 4 minutes, each try up to 120 s) set so that a call to a server that stopped
    answering gives up after about ``tracking.retry_s``: 3 tries of ``retry_s / 3`` s each
    (at least 5 s: a busy server is not a dead one), 1 and 2 s apart. Variables the user
    set are kept."""
    retry_s = float(cfg["tracking"]["retry_s"])
    for name, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(5, round(retry_s / 3)))}.items():
        os.environ.setdefault(name, value)


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


@contextlib.contextmanager
def global_store(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for APIs that have no client argument
    (model logging and loading), then put back exactly: ``mlflow.set_tracking_uri`` also
    writes ``MLFLOW_TRACKING_URI``, which would otherwise redirect every later run."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    old_global, old_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_global)  # None unsets the variable ...
        if old_env is not None:  # ... which the caller may have set
            os.environ["MLFLOW_TRACKING_URI"] = old_env
        else:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


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
    bound_http_retries(cfg)
    uri = tracking_uri(cfg)
    with _store_lock(uri):
        client = _client(uri)
        return _get_or_create_experiment(client, experiment_name(cfg), uri)


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

    def reopen(self) -> None:
        pass


#: calls a run could not send while its server was not answering, replayed in order later
PENDING_FILE = "mlflow_pending.json"
RECHECK_S = 5.0  # while suspended, ask the server at most this often (at log points)
_UNREACHABLE_WORDS = ("failed with exception", "max retries exceeded", "connection refused",
                      "timed out", "connectionerror", "remotedisconnected", "connection aborted",
                      "connection reset", "bad gateway", "service unavailable")


def _is_unreachable(exc: BaseException) -> bool:
    """The server did not answer (refused, reset, timed out, retries exhausted), as opposed
    to answering with an error about the request."""
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, OSError) or any(word in text for word in _UNREACHABLE_WORDS)


class RunTracker(NullTracker):
    """One MLflow run, addressed by id, logged through its own client with retries.

    While training (``log_training_start`` .. ``finish``) it also samples system metrics
    (MLflow's psutil monitor, ``tracking.system_metrics``) and copies the package's log lines
    into ``{run_dir}/train.log``, which ``finish`` attaches to the run whatever the status.

    A server that stops answering suspends the tracker after one bounded call
    (``bound_http_retries``) and one warning: the run goes on, each call it would have made
    is kept in order in ``{run_dir}/mlflow_pending.json`` and, at a later call once the
    server answers MLflow's API again (asked at most every ``RECHECK_S`` s), or when the
    folder's run is opened next (``open_run``), replayed into the same MLflow run."""

    def __init__(self, uri: str, run_id: str, pending_file: str | os.PathLike[str] | None = None
                 ) -> None:
        self.uri = uri
        self.run_id = run_id
        self.client = _client(uri)
        self._monitor: Any = None
        self._log_handler: logging.Handler | None = None
        self._log_file: Path | None = None
        self._root_level = logging.NOTSET
        self.pending_file = Path(pending_file) if pending_file is not None else None
        self.pending: list[dict[str, Any]] = self._load_pending()
        self.suspended = bool(self.pending)
        self._warned = False
        self._next_check = 0.0

    # --- sending, suspending, replaying ---------------------------------------------------

    def _load_pending(self) -> list[dict[str, Any]]:
        if self.pending_file is None or not self.pending_file.is_file():
            return []
        try:
            record = json.loads(self.pending_file.read_text())
        except (ValueError, OSError):
            log.warning("%s cannot be read; its calls are lost", self.pending_file)
            return []
        return list(record.get("calls", [])) if record.get("run_id") == self.run_id else []

    def _save_pending(self) -> None:
        if self.pending_file is None:
            return
        if self.pending:
            atomic_write_text(self.pending_file, json.dumps(
                {"uri": self.uri, "run_id": self.run_id, "calls": self.pending}) + "\n")
        else:
            self.pending_file.unlink(missing_ok=True)

    def _execute(self, call: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        kind, args = call["kind"], call["args"]
        if kind == "metrics":
            batch = [Metric(k, v, t, step) for k, v, t, step in args]
            with_retry(self.client.log_batch, self.run_id, metrics=batch)
        elif kind == "tags":
            with_retry(self.client.log_batch, self.run_id,
                       tags=[RunTag(k, v) for k, v in args])
        elif kind == "params":
            self._log_params_now(args)
        elif kind == "artifact":
            if Path(args[0]).is_file():
                with_retry(self.client.log_artifact, self.run_id, args[0], args[1])
        elif kind == "status":
            status, end_time = args
            if status == "RUNNING":
                with_retry(self.client.update_run, self.run_id, "RUNNING")
            else:
                with_retry(self.client.set_terminated, self.run_id, status, end_time)

    def _send(self, kind: str, args: Any) -> None:
        """One call now, or, while the server does not answer, kept for later."""
        call = {"kind": kind, "args": args}
        if self.suspended and not self.resume():
            self.pending.append(call)
            self._save_pending()
            return
        try:
            self._execute(call)
        except Exception as exc:
            if not _is_unreachable(exc):
                raise
            self._suspend(exc)
            self.pending.append(call)
            self._save_pending()

    def guard(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """A call that cannot be kept for later (the model's upload): made only while the
        server answers; a server that stops answering suspends the tracker (None)."""
        if self.suspended and not self.resume():
            log.info("MLflow server %s not answering: %s skipped", self.uri,
                     getattr(call, "__name__", "a call"))
            return None
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _is_unreachable(exc):
                raise
            self._suspend(exc)
            return None

    def _suspend(self, exc: BaseException) -> None:
        self.suspended = True
        self._next_check = time.monotonic() + RECHECK_S
        if self._monitor is not None:  # its thread would only retry in vain: stop, no join
            self._monitor._shutdown_event.set()
            self._monitor = None
        message = ("MLflow server %s stopped answering (%s); the run goes on with tracking "
                   "suspended: its metrics stay in history.csv and are logged into MLflow run "
                   "%s when the server answers again, or at the next train / evaluate of the "
                   "folder")
        args = (self.uri, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__,
                self.run_id)
        (log.info if self._warned else log.warning)(message, *args)
        self._warned = True

    def resume(self, force: bool = False) -> bool:
        """While suspended: if the server answers MLflow's API again (asked at most every
        ``RECHECK_S`` s unless ``force``), replay the kept calls in order; True when none
        remain."""
        if not self.suspended:
            return True
        if not force and time.monotonic() < self._next_check:
            return False
        self._next_check = time.monotonic() + RECHECK_S
        try:
            _probe(self.uri, timeout=min(5.0, RECHECK_S))
        except (OSError, ValueError):
            return False
        replayed = 0
        while self.pending:
            try:
                self._execute(self.pending[0])
            except Exception as exc:
                if not _is_unreachable(exc):
                    raise
                self._save_pending()
                return False
            self.pending.pop(0)
            replayed += 1
        self.suspended = False
        self._save_pending()
        log.warning("MLflow server %s answers again: %d kept call(s) logged into run %s",
                    self.uri, replayed, self.run_id)
        return True

    # --- what a run logs ------------------------------------------------------------------

    def _log_params_now(self, params: Mapping[str, Any]) -> None:
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

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log settings; on a resumed run only the new ones (MLflow params are immutable)."""
        self._send("params", {k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [[k, float(v), now, step or 0] for k, v in metrics.items()]
        if batch:
            self._send("metrics", batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [[k, str(v)] for k, v in tags.items() if v is not None]
        if batch:
            self._send("tags", batch)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._send("artifact", [str(Path(path).resolve()), artifact_path])

    def start_system_metrics(self) -> None:
        """MLflow's psutil sampler (CPU, memory, disk, network, GPU when present) as
        ``system/*`` metrics of this run, continuing the step count of a resumed run."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        if self._monitor is None and not self.suspended:
            self._monitor = self.guard(
                SystemMetricsMonitor, self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                resume_logging=True, tracking_uri=self.uri,
            )
            if self._monitor is not None:
                self._monitor.start()

    def capture_log(self, path: str | os.PathLike[str]) -> None:
        """Copy this process's log lines into ``path`` (appended: a resumed run continues it)."""
        if self._log_handler is not None:
            return
        self._log_file = Path(path)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self._log_file, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        root.addHandler(handler)
        self._root_level = root.level
        if root.level > logging.INFO:  # INFO lines reach the file even if nobody set logging up
            root.setLevel(logging.INFO)
        self._log_handler = handler

    def _stop_extras(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            try:
                monitor.finish()
                # one reading at the end of every session, so a session shorter than the
                # sampling interval has its system metrics too
                monitor.collect_metrics()
                self.guard(monitor.publish_metrics, monitor.aggregate_metrics())
                self.guard(monitor.mlflow_logger.flush)
            except Exception:  # the sampler is a nicety; never fail a run over it
                log.warning("could not stop MLflow's system-metrics sampler", exc_info=True)
        if self._log_handler is not None:
            log.info("MLflow run %s ends", self.run_id)
            handler, self._log_handler = self._log_handler, None
            logging.getLogger().removeHandler(handler)
            logging.getLogger().setLevel(self._root_level)
            handler.close()
            if self._log_file is not None and self._log_file.is_file():
                self.log_artifact(self._log_file)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED, with an end time); a failed run keeps its
        log and system metrics up to the failure. While suspended the end is kept for later
        too (the MLflow run shows RUNNING until the server has it)."""
        try:
            self._stop_extras()
        finally:
            self._send("status", [status, int(time.time() * 1000)])

    def reopen(self) -> None:
        """Mark a resumed run as running again."""
        self._send("status", ["RUNNING", None])


def run_method(cfg: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> str:
    """The method a run folder trains: its parent folder's name inside the workflow's layout
    (``runs/{d}/{method}/{run}``; baselines share heads, so only the folder tells them apart),
    else ``model.head``."""
    from subspace_fsl import paths

    folder = Path(run_dir).resolve()
    if folder.parent.parent == paths.runs_root(cfg).resolve():
        return folder.parent.name
    return str(cfg["model"]["head"])


def benchmark_record(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``tracking/{d}.json`` marker ``init-tracking`` wrote, if it is for this store."""
    from subspace_fsl import paths

    marker = paths.tracking_marker(cfg)
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    if not record.get("enabled") or record.get("uri") != tracking_uri(cfg):
        return None
    return record


def _find_run_of_folder(client: Any, experiment_id: str, folder: str) -> Any | None:
    """The oldest live run tagged with this folder (older stores may hold duplicates)."""
    if "'" in folder:  # not expressible in a filter string; fall back to the record file
        return None
    found = with_retry(
        client.search_runs, [experiment_id], filter_string=f"tags.{RUN_DIR_TAG} = '{folder}'",
        order_by=["attributes.start_time ASC"], max_results=5,
    )
    return found[0] if found else None


def _create_run_once(
    client: Any, experiment_id: str, tags: Mapping[str, str], folder: str
) -> str:
    """``create_run``, retried while the store is busy, but never twice: a create that failed
    after the store had done it (a locked commit reported late, a server reply lost) would
    otherwise leave a second run of the folder; each retry first looks the folder's run up."""
    delay, deadline = 0.05, time.monotonic() + RETRY_SECONDS
    while True:
        try:
            return client.create_run(
                experiment_id, tags=dict(tags), run_name=tags["mlflow.runName"]).info.run_id
        except Exception as exc:
            if not _is_transient(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
            found = _find_run_of_folder(client, experiment_id, folder)
            if found is not None:
                return found.info.run_id


def open_run(
    cfg: Mapping[str, Any], run_dir: str | os.PathLike[str], tags: Mapping[str, Any] | None = None
) -> NullTracker:
    """The MLflow run of ``run_dir``, named ``{method}/{folder}`` and a child of the
    benchmark's parent run (when ``init-tracking`` made one). A ``NullTracker`` when disabled.

    The run is found by ``{run_dir}/mlflow_run.json`` or, failing that (the file lost, written
    for another store, or never written because the job died right after creating the run),
    by the ``run_dir`` tag in the store; only then is one created, under the store lock, so a
    restarted folder never gets a second run."""
    if not cfg["tracking"]["enabled"]:
        return NullTracker()
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    experiment_id = ensure_store(cfg)
    folder = Path(run_dir).resolve()
    record_path = Path(run_dir) / RUN_FILE
    client = _client(uri)
    method = run_method(cfg, folder)
    benchmark = benchmark_record(cfg)
    identity = {"mlflow.runName": f"{method}/{folder.name}", RUN_DIR_TAG: str(folder),
                METHOD_TAG: method, KIND_TAG: "training"}
    if benchmark and benchmark.get("parent_run_id"):
        identity[PARENT_TAG] = benchmark["parent_run_id"]
        identity[BENCHMARK_TAG] = benchmark.get("benchmark")
    run_tags = {**identity, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}

    run_id = None
    record = _read_record(record_path)
    if record is not None:
        if record.get("uri") == uri:
            try:
                run = with_retry(client.get_run, record["run_id"])
                if run.info.lifecycle_stage == "active":
                    run_id = run.info.run_id
            except MlflowException:
                log.warning(
                    "MLflow run %s is gone from %s; looking for the folder's run", record["run_id"],
                    uri,
                )
    if run_id is None:
        with _store_lock(uri):
            found = _find_run_of_folder(client, experiment_id, str(folder))
            if found is not None:
                run_id = found.info.run_id
            else:
                run_id = _create_run_once(client, experiment_id, run_tags, str(folder))
            record = {"uri": uri, "experiment_id": experiment_id, "run_id": run_id}
            atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    tracker = RunTracker(uri, run_id, Path(run_dir) / PENDING_FILE)
    if tracker.pending:  # calls an earlier session could not send: into the same run first
        tracker.resume(force=True)
    tracker.set_tags(run_tags)  # a reused run gets today's name and parent
    return tracker


def replay_pending(cfg: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> None:
    """Send what an earlier session of ``run_dir`` kept while its server was not answering
    (``mlflow_pending.json``), e.g. when a finished run is trained again (a no-op)."""
    if cfg["tracking"]["enabled"] and (Path(run_dir) / PENDING_FILE).is_file():
        open_run(cfg, run_dir)


def retire_run(cfg: Mapping[str, Any], run_dir: str | os.PathLike[str], reason: str) -> None:
    """Detach a run folder's MLflow run from the folder before the folder is started afresh
    (its settings changed): the run keeps its history, is tagged ``subspace_fsl.superseded``
    with ``reason``, its ``run_dir`` tag no longer names the folder (so :func:`open_run` makes
    a new run) and, if it was left RUNNING, it ends KILLED."""
    if not cfg["tracking"]["enabled"]:
        return
    uri = tracking_uri(cfg)
    client = _client(uri)
    folder = Path(run_dir).resolve()
    run_id = recorded_run_id(run_dir)
    if run_id is None:
        found = _find_run_of_folder(client, ensure_store(cfg), str(folder))
        run_id = found.info.run_id if found is not None else None
    if run_id is None:
        return
    tracker = RunTracker(uri, run_id)
    tracker.set_tags({RUN_DIR_TAG: f"{folder} (superseded)", SUPERSEDED_TAG: reason[:5000]})
    if with_retry(client.get_run, run_id).info.status == "RUNNING":
        with_retry(client.set_terminated, run_id, "KILLED")
    log.warning("MLflow run %s of %s is superseded: %s", run_id, folder, reason)


def recorded_run_id(run_dir: str | os.PathLike[str]) -> str | None:
    """The MLflow run id recorded in a run directory, if any."""
    record = _read_record(Path(run_dir) / RUN_FILE)
    return None if record is None else record.get("run_id")


def _read_record(path: Path) -> dict[str, Any] | None:
    """``mlflow_run.json``; None when absent or unreadable (the store's ``run_dir`` tag then
    finds the run)."""
    from subspace_fsl.readers import UnreadableFileError, read_json

    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except UnreadableFileError as exc:
        log.warning("%s", exc)
        return None


# --- what a training run logs ----------------------------------------------------------------

#: the sections a run's result depends on: its params (grid, runtime and tracking are not)
PARAM_SECTIONS = ("dataset", "split", "model", "train", "eval")
TAG_SECTIONS = ("runtime", "tracking")
#: dataset settings a source does not read (the generator's on a real data set, the CUB
#: archive's on the others): not params of its runs
SOURCE_ONLY_KEYS = {
    "cub": ("synthetic",),
    "folder": ("synthetic", "url", "md5", "size_bytes"),
    "synthetic": ("url", "md5", "size_bytes"),
}


def run_params(cfg: Mapping[str, Any], split: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What ran: the run's own resolved ``dataset``/``split``/``model``/``train``/``eval``
    settings (``dataset.synthetic.*`` only for a synthetic source), ``pretrain.*`` when the
    run starts from the pretrain stage's backbone (``train.init: pretrained``), plus the class
    counts of the split file (``split.n_base``, ``split.n_val``, ``split.n_novel``)."""
    pretrained = cfg.get("train", {}).get("init") == "pretrained"
    sections = {k: dict(cfg[k]) for k in (*PARAM_SECTIONS, *(("pretrain",) if pretrained else ()))
                if k in cfg}
    dataset = sections.get("dataset", {})
    for key in SOURCE_ONLY_KEYS.get(str(dataset.get("source")), ()):
        dataset.pop(key, None)
    params = flatten(sections)
    for part in ("base", "val", "novel"):
        if split is not None and part in split:
            params[f"split.n_{part}"] = str(len(split[part]))
    return params


def runtime_tags(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Where and how it ran (``runtime.*``, ``tracking.*``): tags, since they may change
    between a run and its resumption without changing the result."""
    return flatten({k: cfg[k] for k in TAG_SECTIONS if k in cfg})


def log_dataset(tracker: NullTracker, cfg: Mapping[str, Any], data: Any, context: str) -> None:
    """The image cache as an MLflow dataset input (Datasets column and tab): name = the data
    set, digest = the cache stamp (its first 32 hex digits; MLflow keeps at most 36 characters,
    the whole stamp is in the profile), source = the cache folder."""
    if not isinstance(tracker, RunTracker):
        return
    from mlflow.entities import Dataset, DatasetInput, InputTag

    cache = data.cache
    root = Path(cache.directory).resolve()
    profile = {"stamp": data.stamp, "images": len(data.labels),
               "classes": len(cache.class_names),
               **{f"{p}_classes": len(data.split.get(p, [])) for p in ("base", "val", "novel")}}
    dataset = Dataset(
        name=str(cfg["dataset"]["name"]), digest=data.stamp[:32], source_type="local",
        source=json.dumps({"uri": root.as_uri()}), schema=None, profile=json.dumps(profile),
    )
    tracker.guard(with_retry, tracker.client.log_inputs, tracker.run_id,
                  datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


def log_training_start(
    tracker: NullTracker, cfg: Mapping[str, Any], data: Any, run_dir: str | os.PathLike[str]
) -> None:
    """At the start of a training session: params (:func:`run_params` of the settings the
    training reads, ``grid.training_view``: no ``eval.episodes`` / ``eval.shots``, which each
    evaluation records as its own tags), runtime tags, the data set input and the split file;
    starts the system-metrics sampler (``tracking.system_metrics``) and the ``train.log``
    copy that ``finish`` attaches."""
    from subspace_fsl.grid import training_view

    if not isinstance(tracker, RunTracker):
        return
    tracker.capture_log(Path(run_dir) / TRAIN_LOG)
    tracker.log_params(run_params(training_view(cfg), data.split))
    tracker.set_tags(runtime_tags(cfg))
    log_dataset(tracker, cfg, data, "training")
    split_file = getattr(data, "split_file", None)
    if split_file is not None and Path(split_file).is_file():
        tracker.log_artifact(split_file, "data")
    if cfg["tracking"]["system_metrics"]:
        tracker.start_system_metrics()


def episodes_digest(episodes: Any) -> str:
    """The evaluation episodes' digest (:func:`subspace_fsl.data.episodes.plan_digest`:
    sha256 of every episode's classes, support and query indices); equal digests mean the
    runs were scored on identical episodes."""
    from subspace_fsl.data.episodes import plan_digest

    return plan_digest(episodes)


#: evaluation metric names: training's validation checks already own ``val_acc`` (a history
#: over episodes), so the evaluation on the validation split is ``val_eval_*``
EVAL_PREFIX = {"novel": "novel", "val": "val_eval", "base": "base_eval"}


def log_evaluation(
    cfg: Mapping[str, Any], run_dir: str | os.PathLike[str], summary: Mapping[str, Any],
    out_dir: str | os.PathLike[str], digest: str,
) -> None:
    """An evaluation into its training run: ``novel_acc``/``novel_ci95``/``novel_std`` (or
    ``val_eval_*``) at the checkpoint's episode, the episodes' digest as the tag
    ``{split}_episodes_digest``, and its files under ``eval/{split}``; an evaluation at a
    shot other than the training one (``eval.shots``) is ``novel_shot{k}_acc``, ... and
    ``eval/novel_shot{k}``."""
    split = summary["split"]
    tracker = open_run(cfg, run_dir)
    prefix = EVAL_PREFIX.get(split, f"{split}_eval")
    if summary.get("train_shot", summary.get("shot")) != summary.get("shot"):
        # its own names: the training-shot evaluation's metrics stay what they are
        prefix, split = f"{prefix}_shot{summary['shot']}", f"{split}_shot{summary['shot']}"
    tracker.log_metrics(
        {f"{prefix}_acc": summary["mean"], f"{prefix}_ci95": summary["ci95"],
         f"{prefix}_std": summary["std"]},
        step=int(summary.get("checkpoint_episode") or 0),
    )
    tracker.set_tags({f"{split}_episodes_digest": digest, f"{split}_episodes": summary["episodes"]})
    for name in ("summary.json", "episodes.csv", "config.yaml"):
        if (Path(out_dir) / name).is_file():
            tracker.log_artifact(Path(out_dir) / name, f"eval/{split}")
