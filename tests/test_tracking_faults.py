"""Tracking faults never hang or lose a run: a real ``mlflow server`` killed mid-run and
started again (the run finishes, with one warning, and its MLflow run ends up with every
metric of history.csv and status FINISHED), SIGTERM while the server is dead (prompt exit),
and a web server that is not MLflow as the tracking URI (one line, exit 2, no run folder).

Every step waits on an event (a file appearing, a line on the pipe, a process exit); the
timeouts are generous bounds against real hangs only."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_cli_errors import error_line
from tiny import cli_settings
from waiting import HANG_S

from subspace_fsl.config import validate
from subspace_fsl.data.cache import prepare

CLI = [sys.executable, "-m", "subspace_fsl.cli"]
HANG = HANG_S  # only a real hang takes this long (tests/waiting.py)
WARNING = "stopped answering"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store: str, port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """``mlflow server`` on ``port``; returns once it answers MLflow's API (its first API
    call sets the store up)."""
    from subspace_fsl.tracking import PROBE_PATH

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        cwd=cwd)  # its artifacts (./mlartifacts) land in the test's folder
    while True:  # until it answers (or dies): the process exit is the failure event
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{PROBE_PATH}", timeout=HANG):
                return proc
        except urllib.error.HTTPError:
            return proc  # MLflow's RESOURCE_DOES_NOT_EXIST: it answers
        except OSError:
            threading.Event().wait(0.5)


def kill_server(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers, at once
    proc.wait(timeout=HANG)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data set and its image cache, made once for the tests that train on it."""
    root = tmp_path_factory.mktemp("faults")
    prepare(validate(cli_settings(root)), progress=False)
    return root


@pytest.fixture
def setup(tmp_path: Path, prepared: Path) -> Iterator[tuple[Path, str, int]]:
    settings = {**cli_settings(tmp_path), "data_dir": str(prepared / "data")}
    settings["train"].update(max_episodes=40, log_every=2, checkpoint_every=2, val_every=10)
    settings["tracking"] = {"enabled": True, "system_metrics": False, "retry_s": 30,
                            "connect_timeout_s": HANG}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    shutil.copytree(prepared / "results", tmp_path / "results")  # the cache, this test's own
    yield tmp_path, f"sqlite:///{tmp_path / 'store.db'}", free_port()


def env_for(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", PYTHONUNBUFFERED="1",
               MLFLOW_ENABLE_ASYNC_LOGGING="false")
    return env


def train_until_server_dies(root: Path, port: int, server: subprocess.Popen[bytes]
                            ) -> tuple[subprocess.Popen[str], list[str]]:
    """Start training; when its first checkpoint appears, hold it (SIGSTOP), kill the
    server, let it go on (SIGCONT) and read its stderr until the one warning."""
    proc = subprocess.Popen([*CLI, "train", "--config", str(root / "tiny.yaml"),
                             "--out", str(root / "run")], text=True, env=env_for(port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (root / "run" / "checkpoint.pt").is_file():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGSTOP)
    kill_server(server)
    proc.send_signal(signal.SIGCONT)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if WARNING in line:
            return proc, lines
    raise AssertionError(f"no warning; exit {proc.wait()}:\n{''.join(lines)[-3000:]}")


def test_a_server_killed_mid_run_and_restarted_loses_nothing(setup):
    root, store, port = setup
    proc, lines = train_until_server_dies(root, port, start_server(store, port, root))
    server = start_server(store, port, root)
    try:
        rest = proc.stderr.read() if proc.stderr else ""
        assert proc.wait(timeout=HANG) == 0, rest[-3000:]
        assert sum(WARNING in line for line in [*lines, *rest.splitlines()]) == 1
        if (root / "run" / "mlflow_pending.json").is_file():  # the server came back too late
            again = subprocess.run([*CLI, "train", "--config", str(root / "tiny.yaml"),
                                    "--out", str(root / "run")], capture_output=True,
                                   text=True, env=env_for(port), timeout=HANG)
            assert again.returncode == 0, again.stderr[-3000:]
        assert not (root / "run" / "mlflow_pending.json").exists()

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run_id = yaml.safe_load((root / "run" / "mlflow_run.json").read_text())["run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        history = pd.read_csv(root / "run" / "history.csv")
        for column in ("train_loss", "train_acc", "l1", "l2", "lr", "val_acc"):
            logged = {m.step: m.value for m in client.get_metric_history(run_id, column)}
            expected = history.dropna(subset=[column])
            assert sorted(logged) == sorted(expected["episode"]), column
            for step, value in zip(expected["episode"], expected[column], strict=True):
                assert logged[step] == pytest.approx(value, rel=1e-6), (column, step)
    finally:
        kill_server(server)


def test_sigterm_while_the_server_is_dead_exits_promptly(setup):
    root, store, port = setup
    proc, _ = train_until_server_dies(root, port, start_server(store, port, root))
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read() if proc.stderr else ""  # ends when the process exits
    code = proc.wait(timeout=HANG)
    assert code != 0 and "stopped by signal 15" in rest, rest[-3000:]
    assert (root / "run" / "checkpoint.pt").is_file()
    assert (root / "run" / "mlflow_pending.json").is_file()  # kept for the next run


class _Page(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_a_web_server_that_is_not_mlflow_is_one_line(tmp_path: Path):
    (tmp_path / "index.html").write_text("<html>not mlflow</html>")
    handler = lambda *a: _Page(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    settings = cli_settings(tmp_path)
    settings["tracking"] = {"enabled": True}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    try:
        for args in (("train", "--out", str(tmp_path / "run")),
                     ("init-tracking", "--out", str(tmp_path / "t.json"))):
            proc = subprocess.run([*CLI, *args, "--config", str(tmp_path / "tiny.yaml")],
                                  capture_output=True, text=True, timeout=HANG,
                                  env={**env, "MLFLOW_TRACKING_URI": uri})
            error_line(proc, uri, "not an MLflow tracking server")
        assert not (tmp_path / "run").exists() and not (tmp_path / "t.json").exists()
    finally:
        server.shutdown()
