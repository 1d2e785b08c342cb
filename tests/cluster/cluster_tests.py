"""The cluster path run for real: a loopback SLURM cluster with accounting, an MLflow server on
PostgreSQL, and the project's SLURM profile (`make test-cluster`; several minutes).

tests/cluster/cluster.sh installs what is missing (apt-get, as root) and starts / stops the
daemons. The profile is used as shipped except for what a site must change anyway: the account
and partition names (the lines marked CHANGE) and `use-conda` (no conda channel here; the venv
runs the jobs). The executor's first status check comes after 5 s instead of 40 s so the test
waits less between job waves (a polling interval, not a resource).

The file name does not match pytest's test_*.py on purpose: `make test` (pytest over tests/)
does not collect it; `make test-cluster` names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from test_slurm_profile import MODEL_RULES  # noqa: E402
from test_workflow import RUN_NAMES, TINY, _write_config, job_counts  # noqa: E402
from waiting import HANG_S, wait_until  # noqa: E402

from subspace_fsl import grid, paths, report  # noqa: E402
from subspace_fsl.config import load_config, yaml_dump  # noqa: E402

SCRIPT = REPO / "tests" / "cluster" / "cluster.sh"
BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("CLUSTER_STATE", "/tmp/subspace-fsl-cluster"))
ACCOUNT, CPU_PARTITION, GPU_PARTITION = "fsl_acct", "fsl_cpu", "fsl_gpu"
SLURM_CONF = STATE / "etc" / "slurm.conf"
MLFLOW_URI = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '15000')}"
STATUS_CHECK_S = "5"

# one job that trains long enough to be cancelled in the middle (checkpoints every 25 episodes)
LONG = {**TINY,
        "train": {**TINY["train"], "max_episodes": 3000, "val_every": 500, "patience": 100,
                  "checkpoint_every": 25, "log_every": 25}}
LONG_RUN = ("protonet", "w3_k1_S1_l1-0_l2-0_anone_seed0")


def _script(*args: str) -> None:
    subprocess.run(["bash", str(SCRIPT), *args], check=True, timeout=HANG_S)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SLURM_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", SLURM_CONF=str(SLURM_CONF),
               MLFLOW_ENABLE_ASYNC_LOGGING="false", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def slurm():
    try:
        _script("start-slurm", ACCOUNT, CPU_PARTITION, GPU_PARTITION)
        yield
    finally:
        _script("stop-slurm")


@pytest.fixture(scope="module")
def mlflow_server():
    try:
        _script("start-mlflow", str(BIN))
        yield MLFLOW_URI
    finally:
        _script("stop-mlflow")


def site_profile(tmp: Path) -> Path:
    """profiles/slurm with this site's account and partitions; nothing else changed."""
    shipped = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert set(shipped["set-resources"]) >= MODEL_RULES
    profile = json.loads(json.dumps(shipped))
    profile["default-resources"].update(slurm_account=ACCOUNT, slurm_partition=CPU_PARTITION)
    for rule in MODEL_RULES:  # the shipped file's one GPU partition line, after its merge keys
        profile["set-resources"][rule]["slurm_partition"] = GPU_PARTITION
    profile["use-conda"] = False
    changed = {key for key in shipped if shipped[key] != profile[key]}
    assert changed == {"default-resources", "set-resources", "use-conda"}
    folder = tmp / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def snakemake(profile: Path, config: Path, *args: str, uri: str, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--profile",
         str(profile), "--configfile", str(config),
         "--slurm-init-seconds-before-status-checks", STATUS_CHECK_S, *args],
        cwd=config.parent, env=_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True,
        timeout=HANG_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def sacct(*job_ids: str) -> pd.DataFrame:
    """One row per job (allocation): id, name, partition, account, state, exit code, elapsed."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--starttime", "now-1days",
         "--format=JobID,JobName%60,Partition,Account,State,ExitCode,Elapsed,AllocTRES%60",
         *([f"--jobs={','.join(job_ids)}"] if job_ids else [])],
        env=_env(), capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return pd.DataFrame(rows, columns=["id", "name", "partition", "account", "state", "exit",
                                       "elapsed", "tres"])


def submitted_ids(output: str) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", output)


def test_tiny_workflow_runs_on_slurm_with_the_profile(slurm, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    profile = site_profile(tmp_path)
    config = _write_config(tmp_path, TINY)
    cfg = load_config(config)
    started = time.monotonic()
    proc = snakemake(profile, config, uri=mlflow_server)
    wall = time.monotonic() - started
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    assert counts["train"] == len(RUN_NAMES) == 4 and counts["evaluate"] == 8
    assert counts["pretrain"] == 1 and counts["evaluate_shot"] == 4 and counts["explain"] == 1

    for name in report.TABLE_NAMES:
        for ext in report.TABLE_FORMATS:
            assert (paths.tables_dir(cfg) / f"{name}.{ext}").stat().st_size > 0
    main = pd.read_csv(paths.tables_dir(cfg) / "main.csv")
    assert sorted(zip(main["method"], main["eval_shot"], strict=True)) == [
        ("multisubspace", 1), ("multisubspace", 2), ("protonet", 1), ("protonet", 2)]
    for name in report.PLOT_NAMES:
        assert (paths.plots_dir(cfg) / f"{name}.png").stat().st_size > 5000

    # every job went through SLURM (the local rules excepted) and finished COMPLETED
    ids = submitted_ids(out)
    local = {"init_tracking", "all"}
    assert len(ids) == sum(n for rule, n in counts.items() if rule not in local), out[-3000:]
    jobs = sacct(*ids)
    print(f"\nSLURM tiny workflow: {len(jobs)} jobs, {wall:.0f} s wall\n{jobs.to_string()}")
    assert len(jobs) == len(ids)
    assert (jobs["state"] == "COMPLETED").all(), jobs.to_string()
    assert (jobs["account"] == ACCOUNT).all()
    gpu_jobs = jobs[jobs["partition"] == GPU_PARTITION]
    assert len(gpu_jobs) == sum(counts[rule] for rule in MODEL_RULES), jobs.to_string()
    assert gpu_jobs["tres"].str.contains("gres/gpu=1").all(), gpu_jobs.to_string()
    assert (jobs.loc[jobs["partition"] == CPU_PARTITION, "name"].str.len() > 0).all()

    # the runs are on the server (PostgreSQL): the benchmark's parent run, its tables, and
    # every training run as its child with its evaluation metrics and model
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tiny")
    marker = json.loads(paths.tracking_marker(cfg).read_text())
    assert marker["uri"] == mlflow_server
    assert marker["view"].startswith(f"{mlflow_server}/#/experiments/")  # the server's own UI
    parent = client.get_run(marker["parent_run_id"])
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    children = {f"{method}/{name}" for method, name in RUN_NAMES}
    assert set(runs) == children | {parent.info.run_name}
    for name in children:
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "novel_acc" in run.data.metrics and "val_eval_acc" in run.data.metrics
        assert "best.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert "tables/main.csv" in tables


def _ctrl_c_works() -> None:
    """In the child before exec: SIGINT back to its default. A shell starts a background
    command (`make test-cluster &`) with SIGINT ignored, and a Python started that way never
    sees Ctrl-C; the test's SIGINT must reach Snakemake as a user's Ctrl-C does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_scancel_mid_training_resumes_on_rerun(slurm, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    profile = site_profile(tmp_path)
    config = _write_config(tmp_path, LONG)
    cfg = load_config(config)
    run_dir = paths.run_dir(cfg, *LONG_RUN)
    target = str(run_dir / "done")
    client = MlflowClient(tracking_uri=mlflow_server)

    # the training job, cancelled once it has written a checkpoint (no automatic retry here,
    # so the killed run can be looked at before it is resumed)
    first = subprocess.Popen(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--profile",
         str(profile), "--configfile", str(config), "--slurm-init-seconds-before-status-checks",
         STATUS_CHECK_S, "--retries", "0", target],
        cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=mlflow_server), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, preexec_fn=_ctrl_c_works)
    try:
        wait_until(lambda: (run_dir / "checkpoint.pt").is_file(), "the first checkpoint", first,
                   poll_s=0.5)
        record = json.loads((run_dir / "mlflow_run.json").read_text())
        jobs = sacct()
        running = jobs[(jobs["state"] == "RUNNING") & jobs["name"].str.len().gt(0)]
        assert len(running) == 1, jobs.to_string()
        train_job = running["id"].item()
        assert not (run_dir / "done").exists()
        subprocess.run(["scancel", train_job], env=_env(), check=True)
        wait_until(lambda: sacct(train_job)["state"].item().startswith("CANCELLED"),
                   "sacct to show the job CANCELLED", poll_s=0.5)
        # the executor plugin (2.8.0) compares sacct's state with its failure states exactly,
        # and sacct says "CANCELLED by 0": it keeps waiting for the job. Stop the workflow as
        # a user does (Ctrl-C), then run it again (docs/workflow.md, "On a SLURM cluster")
        time.sleep(2 * int(STATUS_CHECK_S))
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=HANG_S)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0, out[-3000:]
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "done").exists()
    saved = _checkpoint_episode(run_dir)
    assert 0 < saved < LONG["train"]["max_episodes"]

    # the MLflow run is marked as ended, not left RUNNING (SIGTERM is handled by the engine)
    def ended() -> bool:
        return client.get_run(record["run_id"]).info.status != "RUNNING"
    with contextlib.suppress(AssertionError):  # asserted at the end, after the rerun
        wait_until(ended, "the cancelled run's MLflow status to leave RUNNING", poll_s=0.5)
    killed_status = client.get_run(record["run_id"]).info.status
    print(f"\nMLflow status of the cancelled run: {killed_status}")

    # the rerun (the profile as is: --rerun-incomplete) resumes the run directory and finishes
    second = snakemake(profile, config, target, uri=mlflow_server)
    log = (paths.logs_dir(cfg) / "train" / LONG_RUN[0] / f"{LONG_RUN[1]}.log").read_text()
    resumed = re.search(r"resuming .* from episode (\d+)", log)
    assert resumed and int(resumed[1]) >= saved, log[-2000:]
    assert (run_dir / "done").is_file()
    history = pd.read_csv(run_dir / "history.csv")
    assert history["episode"].max() == LONG["train"]["max_episodes"]
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == record["run_id"]
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    rerun = sacct(*submitted_ids(second.stdout + second.stderr))
    print(f"cancelled job {train_job}, resumed from episode {resumed[1]}:\n{rerun.to_string()}")
    assert (rerun["state"] == "COMPLETED").all() and len(rerun) == 1
    assert killed_status in ("KILLED", "FAILED"), "scancel left the MLflow run RUNNING"


def _checkpoint_episode(run_dir: Path) -> int:
    from subspace_fsl.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / "checkpoint.pt", map_location="cpu")["episode"])


# --- the tracking server under concurrent writers ------------------------------------------

N_JOBS = 8
# from scratch: the tiny config's pre-trained backbone is the workflow's, not made here
JOB_TRAIN = {"max_episodes": 20, "val_every": 10, "val_episodes": 2, "patience": 5,
             "checkpoint_every": 10, "log_every": 2, "init": "scratch"}


def _train_jobs(tmp: Path, uri: str) -> tuple[list[Path], float, list[float]]:
    """N_JOBS concurrent `subspace-fsl train` processes logging to ``uri``: their run dirs,
    the wall time of all, and each one's."""
    data = _prepared_data(tmp)
    runs = [tmp / "runs" / f"job{i}" for i in range(N_JOBS)]
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = load_config(data["config"])
    # the run's complete settings, as a workflow job gets them
    run_config = tmp / "run.yaml"
    run_config.write_text(yaml_dump({**grid.run_settings(cfg, *LONG_RUN),
                                     **grid.runtime_settings(cfg)}))

    def one(i: int) -> float:
        start = time.monotonic()
        proc = subprocess.run(
            [str(BIN / "subspace-fsl"), "train", "--config", str(run_config),
             "--set", f"train.seed={i}", "--split-file", str(data["split"]),
             "--cache", str(data["cache"]), "--out", str(runs[i])],
            env=_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=HANG_S)
        assert proc.returncode == 0, f"job {i} ({proc.returncode}): {proc.stderr[-3000:]}"
        return time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(N_JOBS) as pool:
        each = list(pool.map(one, range(N_JOBS)))
    return runs, time.monotonic() - start, each


_DATA: dict[str, Path] = {}


def _prepared_data(tmp: Path) -> dict[str, Path]:
    if not _DATA:
        root = tmp.parent / "data-shared"
        root.mkdir(exist_ok=True)
        settings = {**TINY, "train": {**TINY["train"], **JOB_TRAIN},
                    "tracking": {"experiment": "concurrent"}}
        config = _write_config(root, settings)
        cli = [str(BIN / "subspace-fsl")]
        env = _env()
        subprocess.run([*cli, "synth", "--config", str(config), "--out", str(root / "raw")],
                       env=env, check=True, capture_output=True)
        subprocess.run([*cli, "prepare", "--config", str(config), "--set",
                        f"dataset.root={root / 'raw'}"], env=env, check=True,
                       capture_output=True)
        cfg = load_config(config)
        subprocess.run([*cli, "split", "--config", str(config), "--cache",
                        str(paths.cache_dir(cfg)), "--out", str(root / "split.json")],
                       env=env, check=True, capture_output=True)
        _DATA.update(config=config, cache=paths.cache_dir(cfg), split=root / "split.json")
    return _DATA


def _check_nothing_lost(uri: str, runs: list[Path]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("concurrent")
    found = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    for run_dir in runs:
        run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        assert run_id in found, run_dir
        run = found[run_id]
        assert run.info.status == "FINISHED"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert run.data.params["train.seed"] == str(config["train"]["seed"])
        assert len(run.data.params) >= 50
        history = pd.read_csv(run_dir / "history.csv")
        logged = client.get_metric_history(run_id, "train_loss")
        assert sorted(m.step for m in logged) == sorted(history["episode"]), run_dir
        assert [round(m.value, 5) for m in sorted(logged, key=lambda m: m.step)] == [
            round(v, 5) for v in history.sort_values("episode")["train_loss"]]
        assert "best.pt" in {a.path for a in client.list_artifacts(run_id)}
    assert len(found) == len(runs)


def test_eight_concurrent_jobs_lose_nothing_on_the_server_and_on_sqlite(mlflow_server,
                                                                         tmp_path):
    figures = {}
    for name, uri in (("server", mlflow_server),
                      ("sqlite", f"sqlite:///{tmp_path / 'sqlite' / 'mlflow.db'}")):
        runs, wall, each = _train_jobs(tmp_path / name, uri)
        _check_nothing_lost(uri, runs)
        figures[name] = (wall, each)
    print(f"\n{N_JOBS} concurrent training jobs ({JOB_TRAIN['max_episodes']} episodes each):")
    for name, (wall, each) in figures.items():
        print(f"  {name:7s} wall {wall:6.1f} s; per job min {min(each):.1f} / median "
              f"{sorted(each)[N_JOBS // 2]:.1f} / max {max(each):.1f} s")
