"""Kill -9 and resume: a run started again with the same command ends exactly like a run that
was never interrupted (history, final metrics, weights), in the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from mlflow import MlflowClient
from tiny import EVERY_10, tiny_settings
from waiting import HANG_S, wait_for_file

from subspace_fsl.config import load_config
from subspace_fsl.data.cache import prepare
from subspace_fsl.engine.checkpoint import load_checkpoint
from subspace_fsl.tracking import recorded_run_id, tracking_uri

MAX_EPISODES = 60


def settings(root: Path) -> dict:
    # augmentation on: the torch RNG must be restored too for the runs to agree
    return tiny_settings(root, train={"max_episodes": MAX_EPISODES, **EVERY_10,
                                      "lr_schedule": "cosine", "augment": "standard"})


def start(config: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "subspace_fsl.cli", "train", "--config", str(config),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen) -> str:
    output = proc.communicate(timeout=HANG_S)[0]
    assert proc.returncode == 0, output
    return output


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path)))
    cfg = load_config(config)
    prepare(cfg, progress=False)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    reference = start(config, straight)  # runs alongside (one thread each)
    victim = start(config, killed)
    wait_for_file(killed / "checkpoint.pt", victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=HANG_S)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "done").exists() and not (killed / "train_summary.json").exists()
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["episode"]
    assert 0 < interrupted_at < MAX_EPISODES
    run_id = recorded_run_id(killed)
    # Snakemake deletes an interrupted job's declared outputs before running it again
    for name in ("best.pt", "history.csv"):
        (killed / name).unlink(missing_ok=True)

    output = finish(start(config, killed))
    assert f"resuming {killed} from episode {interrupted_at}" in output
    finish(reference)

    for name in ("history.csv", "train_summary.json"):
        assert (killed / name).read_text() == (straight / name).read_text(), name
    for name in ("best.pt", "checkpoint.pt"):
        a, b = load_checkpoint(straight / name), load_checkpoint(killed / name)
        assert a.keys() == b.keys()
        for key, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][key]), (name, key)
    assert json.loads((killed / "train_summary.json").read_text())["episodes"] == MAX_EPISODES

    # the resumed run logged into the MLflow run it started, and finished it
    assert recorded_run_id(killed) == run_id
    client = MlflowClient(tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([run_id, recorded_run_id(straight)])
    assert {r.info.status for r in runs} == {"FINISHED"}
    val_steps = lambda rid: sorted({m.step for m in client.get_metric_history(rid, "val_acc")})  # noqa: E731
    assert val_steps(run_id) == val_steps(recorded_run_id(straight)) == list(range(10, 61, 10))


def test_a_checkpoint_with_code_in_a_run_directory_stops_training(tmp_path: Path):
    """A planted checkpoint.pt that would run code is refused before anything runs."""
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "subspace-fsl/1", "model": Evil()}, run / "checkpoint.pt")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "-m", "subspace_fsl.cli", "train", "--config", str(config), "--out",
         str(run), "--set", "tracking.enabled=false"],
        capture_output=True, text=True, env=env, timeout=HANG_S)
    assert result.returncode == 2
    assert "was refused" in result.stderr
    assert not marker.exists()
