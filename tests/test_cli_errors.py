"""A user's mistake or a failing environment is one line on stderr and exit code 2, never a
traceback (unless --debug), never a hang; evaluate refuses settings its checkpoint fixes.

Every case runs the real command line (``python -m subspace_fsl.cli``) on real bad input:
folders and binary files as configs, symlink loops, random bytes as checkpoints, a read-only
and a full file system (tmpfs mounts in a private mount namespace), an MLflow URI nobody
listens on and a server that never answers.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml
from tiny import cli_settings
from waiting import HANG_S

from subspace_fsl.cli import main
from subspace_fsl.config import load_config, yaml_load
from subspace_fsl.data.cache import prepare
from subspace_fsl.engine.checkpoint import load_checkpoint
from subspace_fsl.engine.train import train

CLI = [sys.executable, "-m", "subspace_fsl.cli"]
# The CLI with its imports done before the clock starts: the last line of stdout is how long the
# command itself took. Imports are what a busy machine slows most; a tracking server's retries
# (minutes) stand out from the rest of a failing command (about a second) under any load.
TIMED_CLI = [sys.executable, "-c", "import sys, time\n"
             "import mlflow, torch, subspace_fsl.tracking, subspace_fsl.engine.train\n"
             "import subspace_fsl.engine.evaluate\nfrom subspace_fsl.cli import main\n"
             "started = time.monotonic()\ncode = main()\n"
             "print(f'elapsed {time.monotonic() - started:.3f}')\nsys.exit(code)"]
ADVICE = ("weights_only=False", "weights_only` set to `False", "weights_only set to False")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    (root / "tiny.yaml").write_text(yaml.safe_dump(cli_settings(root)))
    cfg = load_config(root / "tiny.yaml")
    prepare(cfg, progress=False)
    train(cfg, root / "run")
    return root


def cli(*args: str, env: dict[str, str] | None = None, timed: bool = False
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                             "SUBSPACE_FSL_DEBUG")}
    return subprocess.run([*(TIMED_CLI if timed else CLI), *args], capture_output=True,
                          text=True, timeout=HANG_S, env={**base, **(env or {})})


def elapsed(proc: subprocess.CompletedProcess[str]) -> float:
    """Seconds the command of a ``cli(..., timed=True)`` took after its imports."""
    return float(proc.stdout.splitlines()[-1].removeprefix("elapsed "))


def in_process(capsys: pytest.CaptureFixture[str], *args: str
               ) -> subprocess.CompletedProcess[str]:
    """``cli.main`` in this process (saves a torch import where a subprocess adds nothing)."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def error_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one error line of a failed command (exit 2, no traceback), holding ``words``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("subspace-fsl ")]
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def in_mount_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private mount namespace (its tmpfs mounts vanish with it):
    as root directly, otherwise as root of a new user namespace."""
    flags = ["-m"] if os.geteuid() == 0 else ["-U", "-r", "-m"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(["unshare", *flags, "sh", "-c", script], capture_output=True,
                          text=True, timeout=HANG_S, env=env)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- settings files and --set ------------------------------------------------------------


def test_config_that_is_a_folder_or_a_binary_file_is_named(tmp_path: Path):
    folder = tmp_path / "settings"
    folder.mkdir()
    error_line(cli("show-config", "--config", str(folder)), str(folder), "is a folder")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    error_line(cli("show-config", "--config", str(binary)), str(binary), "not a text")


def test_a_yaml_error_in_an_override_names_the_override():
    error_line(cli("show-config", "--set", "x=[1,"), "--set 'x=[1,'", "not valid YAML")


def test_debug_flag_and_environment_show_the_traceback(tmp_path: Path):
    for proc in (cli("--debug", "show-config", "--config", str(tmp_path)),
                 cli("show-config", "--config", str(tmp_path), env={"SUBSPACE_FSL_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr
        assert "ConfigError" in proc.stderr


# --- data, weights, checkpoints, sizes ----------------------------------------------------


def test_an_image_that_is_a_symlink_loop_is_named(workspace: Path, tmp_path: Path):
    images = sorted((workspace / "data" / "tiny" / "images").iterdir())[:2]
    root = tmp_path / "mine"
    for folder in images:
        shutil.copytree(folder, root / folder.name)
    loop = root / images[0].name / "loop.jpg"
    loop.symlink_to(loop)
    proc = cli("prepare", "--config", str(workspace / "tiny.yaml"),
               "--set", "dataset.source=folder", "--set", f"dataset.root={root}",
               "--set", "dataset.name=mine", "--set", f"results_dir={tmp_path / 'results'}")
    error_line(proc, str(loop), "symbolic links")


def test_backbone_weights_that_are_not_a_weights_file_are_named(workspace: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture):
    for name, content, run in (("noise.pt", os.urandom(4096), cli),
                               ("notes.txt", b"hello\n", partial(in_process, capsys))):
        path = tmp_path / name
        path.write_bytes(content)
        proc = run("train", "--config", str(workspace / "tiny.yaml"),
                   "--out", str(tmp_path / "run"), "--set", f"model.backbone_weights={path}")
        error_line(proc, "model.backbone_weights", str(path), "not a weights file")
        assert not any(advice in proc.stderr for advice in ADVICE)


def test_a_random_bytes_checkpoint_is_not_a_checkpoint(workspace: Path, tmp_path: Path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(2048))
    proc = cli("evaluate", "--run", str(workspace / "run"), "--checkpoint", str(noise),
               "--out", str(tmp_path / "eval"))
    line = error_line(proc, str(noise), "is not a checkpoint")
    assert not any(advice in proc.stderr for advice in ADVICE), line


def test_a_head_that_cannot_be_allocated_is_refused_with_the_numbers(
        workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    config = str(workspace / "tiny.yaml")
    line = error_line(cli("train", "--config", config, "--out", str(tmp_path / "a"),
                          "--set", "model.n_subspaces=100000000"),
                      "model.n_subspaces=100000000", "model.subspace_dim=8", "D=256",
                      "cannot be allocated")
    assert "GB" in line
    error_line(in_process(capsys, "train", "--config", config, "--out", str(tmp_path / "b"),
                          "--set", "model.subspace_dim=300"),
               "model.subspace_dim=300", "feature dim D=256")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_finished_run_without_its_summary_is_never_a_traceback(workspace: Path,
                                                                 tmp_path: Path):
    """Missing, or a folder in its place: rewritten (exit 0) or one line naming it."""
    for name in ("missing", "folder"):
        run = tmp_path / name
        shutil.copytree(workspace / "run", run)
        (run / "train_summary.json").unlink()
        if name == "folder":
            (run / "train_summary.json").mkdir()
        proc = cli("train", "--config", str(workspace / "tiny.yaml"), "--out", str(run))
        if proc.returncode == 0:  # the finished marker is checked and the summary rewritten
            assert (run / "train_summary.json").is_file()
        else:
            error_line(proc, "train_summary.json")


# --- read-only and full file systems ------------------------------------------------------


def test_a_read_only_results_dir_is_named(workspace: Path, tmp_path: Path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    config = workspace / "tiny.yaml"
    results = mnt / "results"
    common = f"--config {config} --set results_dir={results}"
    cli_text = " ".join(shlex.quote(c) for c in CLI)
    script = (
        f"mount -t tmpfs -o size=8m tmpfs {mnt} && cp -a {workspace / 'results'} {results} && "
        f"mount -o remount,ro {mnt} || exit 99\n"
        f"{cli_text} init-tracking {common} --set tracking.enabled=true 2> {tmp_path}/store.err\n"
        f"echo $? > {tmp_path}/store.rc\n"
        f"{cli_text} train {common} --out {results}/runs/x 2> {tmp_path}/out.err\n"
        f"echo $? > {tmp_path}/out.rc\n"
    )
    proc = in_mount_namespace(script)
    assert proc.returncode == 0, proc.stderr
    for name, path in (("store", f"{results}/mlflow.db.lock"), ("out", f"{results}/runs")):
        done = subprocess.CompletedProcess(
            [], int((tmp_path / f"{name}.rc").read_text()), "",
            (tmp_path / f"{name}.err").read_text())
        error_line(done, path, "Read-only file system")


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_checkpoint(
        workspace: Path, tmp_path: Path):
    """Room for the first checkpoint and best.pt (episode 2), not for the next checkpoint's
    temporary file (episode 4): the write fails, the episode-2 checkpoint stays intact."""
    run = workspace / "run"
    sizes = {p.name: p.stat().st_size for p in run.iterdir()}
    room = sizes["checkpoint.pt"] * 3 // 2 + sizes["best.pt"] + 256 * 1024
    mnt, snapshot = tmp_path / "small", tmp_path / "snapshot"
    mnt.mkdir()
    cli_text = " ".join(shlex.quote(c) for c in CLI)
    script = (
        f"mount -t tmpfs -o size={room} tmpfs {mnt} || exit 99\n"
        f"{cli_text} train --config {workspace / 'tiny.yaml'} --out {mnt}/run 2> {tmp_path}/err\n"
        f"rc=$?; cp -a {mnt}/run {snapshot}; exit $rc\n"
    )
    proc = in_mount_namespace(script)
    assert proc.returncode != 99, proc.stderr
    done = subprocess.CompletedProcess([], proc.returncode, "", (tmp_path / "err").read_text())
    error_line(done, "No space left on device", f"{mnt}/run/checkpoint.pt")
    assert load_checkpoint(snapshot / "checkpoint.pt")["episode"] == 2
    assert not [p for p in snapshot.iterdir() if p.name.endswith(".tmp")]
    assert not (snapshot / "done").exists()


# --- evaluate: what the checkpoint fixes --------------------------------------------------


def test_evaluate_refuses_settings_the_checkpoint_fixes(workspace: Path, tmp_path: Path):
    meta = workspace / "results" / "cache" / "tiny" / "meta.json"
    before = meta.read_bytes()
    proc = cli("evaluate", "--run", str(workspace / "run"), "--out", str(tmp_path / "eval"),
               "--set", "model.n_subspaces=4", "--set", "dataset.image_size=64",
               "--set", "split.seed=5")
    error_line(proc, "model.n_subspaces=4 (the checkpoint's: 2)",
               "dataset.image_size=64 (the checkpoint's: 32)", "split.seed=5 (the checkpoint's: 0)")
    assert meta.read_bytes() == before  # the shared cache was not rebuilt at 64 px
    assert not (tmp_path / "eval").exists()


def test_evaluate_records_the_settings_it_used(workspace: Path, tmp_path: Path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(workspace / "run"), "--out", str(out),
                 "--set", "eval.episodes=3", "--set", "runtime.threads=1"]) == 0
    used = yaml_load((out / "config.yaml").read_text())
    saved = load_checkpoint(workspace / "run" / "best.pt")["config"]
    assert used["model"] == saved["model"] and used["train"] == saved["train"]
    assert used["eval"]["episodes"] == 3


def test_evaluate_at_another_shot_names_the_evaluation_shot_not_train_shot(workspace: Path,
                                                                          tmp_path: Path):
    """The run was trained at train.shot=2; --shot 10 does not fit its 8-dim subspaces."""
    proc = cli("evaluate", "--run", str(workspace / "run"), "--shot", "10",
               "--out", str(tmp_path / "ev"))
    line = error_line(proc, "--shot", "=10", "train.shot=2", "subspace_dim (8)")
    assert "train.shot=10" not in line
    assert not (tmp_path / "ev").exists()


def test_split_before_prepare_says_to_run_prepare(tmp_path: Path):
    proc = cli("split", "--set", f"results_dir={tmp_path / 'results'}",
               "--set", f"data_dir={tmp_path / 'data'}")
    error_line(proc, "meta.json", "subspace-fsl prepare")


def test_a_truncated_jpeg_is_exit_2_naming_the_file(workspace: Path, tmp_path: Path):
    """``prepare`` of a folder data set and ``predict`` on a cut image: one line naming it."""
    image = next((workspace / "data").rglob("*.jpg"))
    cut = tmp_path / "support" / "a" / "cut.jpg"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    for name in ("a", "b"):
        for root in (tmp_path / "support", tmp_path / "whole"):
            (root / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / name / "whole.jpg")
    proc = cli("prepare", "--config", str(workspace / "tiny.yaml"),
               "--set", f"results_dir={tmp_path / 'results'}", "--set", "dataset.source=folder",
               "--set", "dataset.name=cut", "--set", f"dataset.root={tmp_path / 'support'}")
    assert "truncat" in error_line(proc, str(cut)).lower()
    proc = cli("predict", "--checkpoint", str(workspace / "run" / "best.pt"),
               "--support", str(tmp_path / "whole"), "--images", str(cut),
               "--out", str(tmp_path / "p.csv"), "--config", str(workspace / "tiny.yaml"))
    error_line(proc, str(cut))


def test_result_files_respect_the_umask(workspace: Path, tmp_path: Path):
    """Made through temporary files and renames, results still get 0666/0777 minus the
    umask (tempfile's 0600 / 0700 kept the group out on a shared cluster)."""
    out = tmp_path / "ev"
    proc = subprocess.run(
        [*CLI, "evaluate", "--run", str(workspace / "run"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o027),
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert proc.returncode == 0, proc.stderr
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
        n: "0o640" for n in ("episodes.csv", "config.yaml", "summary.json")}
    assert oct(out.stat().st_mode & 0o777) == "0o750"
    mask = os.umask(0)
    os.umask(mask)
    for name in ("best.pt", "checkpoint.pt", "history.csv", "train_summary.json", "config.yaml"):
        assert (workspace / "run" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# --- tracking: never a hang ---------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung mlflow server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(workspace: Path,
                                                                 tmp_path: Path):
    uri = f"http://127.0.0.1:{unused_port()}"
    env = {"MLFLOW_TRACKING_URI": uri}
    on = ("--set", "tracking.enabled=true")
    config = str(workspace / "tiny.yaml")
    for args in (("init-tracking", "--config", config, "--out", str(tmp_path / "t.json")),
                 ("train", "--config", config, "--out", str(tmp_path / "run")),
                 ("evaluate", "--run", str(workspace / "run"), "--out", str(tmp_path / "ev"))):
        proc = cli(*args, *on, env=env, timed=True)
        error_line(proc, uri, "tracking.enabled=false")
        assert elapsed(proc) < 60
    assert not (tmp_path / "run").exists() and not (tmp_path / "ev").exists()


def test_a_silent_tracking_server_fails_within_the_connect_timeout(workspace: Path,
                                                                  tmp_path: Path,
                                                                  silent_server: str):
    proc = cli("init-tracking", "--config", str(workspace / "tiny.yaml"),
               "--out", str(tmp_path / "t.json"), "--set", "tracking.enabled=true",
               "--set", "tracking.connect_timeout_s=1",
               env={"MLFLOW_TRACKING_URI": silent_server}, timed=True)
    error_line(proc, silent_server, "within 1 s", "tracking.enabled=false")
    assert elapsed(proc) < 20
