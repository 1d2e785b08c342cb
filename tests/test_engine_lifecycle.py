"""The run's lifecycle: the finished marker checked against its outputs, and SIGTERM (what
Snakemake and SLURM send on cancel) ending a run the way Ctrl-C does."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from tiny import EVERY_10, tiny_settings
from waiting import HANG_S, wait_for_file

from subspace_fsl.cli import main
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import prepare
from subspace_fsl.engine.checkpoint import load_checkpoint
from subspace_fsl.engine.train import RunError, train
from subspace_fsl.tracking import recorded_run_id, tracking_uri


def settings(root: Path, max_episodes: int, tracking: bool) -> dict:
    return tiny_settings(root, train={"max_episodes": max_episodes, **EVERY_10},
                         tracking={"enabled": tracking})


@pytest.fixture(autouse=True)
def _default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_missing_outputs_of_a_finished_run_are_rewritten_from_the_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, 10, tracking=False)))
    cfg = load_config(config)
    run = tmp_path / "run"
    summary = train(cfg, run)
    originals = {n: (run / n).read_bytes() for n in ("history.csv", "train_summary.json")}
    best = load_checkpoint(run / "best.pt")
    for name in ("best.pt", "history.csv", "train_summary.json"):
        (run / name).unlink()
    caplog.set_level(logging.INFO)
    assert train(cfg, run) == summary
    assert "rewrote them from checkpoint.pt" in caplog.text
    assert "nothing to do" not in caplog.text
    for name, content in originals.items():
        assert (run / name).read_bytes() == content, name
    rewritten = load_checkpoint(run / "best.pt")
    assert (rewritten["episode"], rewritten["val_acc"]) == (best["episode"], best["val_acc"])
    for key, tensor in best["model"].items():
        assert torch.equal(tensor, rewritten["model"][key]), key

    # without checkpoint.pt there is nothing to rewrite best.pt from: refused, clearly
    (run / "best.pt").unlink()
    (run / "checkpoint.pt").unlink()
    with pytest.raises(RunError, match=r"marked finished \(done\) but best.pt is missing"):
        train(cfg, run)
    assert main(["train", "--config", str(config), "--out", str(run)]) == 2


def _start(config: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "subspace_fsl.cli", "train", "--config", str(config),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_sigterm_ends_a_run_like_ctrl_c_and_a_rerun_resumes(tmp_path: Path) -> None:
    max_episodes = 30
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, max_episodes, tracking=True)))
    cfg = load_config(config)
    prepare(cfg, progress=False)
    run = tmp_path / "run"
    victim = _start(config, run)
    wait_for_file(run / "checkpoint.pt", victim)
    os.kill(victim.pid, signal.SIGTERM)  # what Snakemake and SLURM send on cancel
    output = victim.communicate(timeout=HANG_S)[0]
    assert victim.returncode == 128 + signal.SIGTERM, output
    assert "stopped by signal 15" in output and "Traceback" not in output
    assert not (run / "done").exists() and not (run / "train_summary.json").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    stopped_at = load_checkpoint(run / "checkpoint.pt")["episode"]
    assert 0 < stopped_at < max_episodes

    client = MlflowClient(tracking_uri(cfg))
    run_id = recorded_run_id(run)
    info = client.get_run(run_id).info
    assert info.status == "KILLED" and info.end_time is not None

    rerun = _start(config, run)
    output = rerun.communicate(timeout=HANG_S)[0]
    assert rerun.returncode == 0, output
    assert f"resuming {run} from episode {stopped_at}" in output
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["episodes"] == max_episodes and (run / "done").is_file()
    assert recorded_run_id(run) == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def test_changed_settings_are_refused_by_the_cli_and_restart_the_workflows_run(
    tmp_path: Path,
) -> None:
    """A run folder holds one run: other settings are refused (CLI), or, in the workflow
    (whose train job re-runs because its params changed), start the folder afresh with a new
    MLflow run, the old one kept and marked superseded."""
    from subspace_fsl.engine.train import SettingsChanged
    from subspace_fsl.tracking import SUPERSEDED_TAG

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, 4, tracking=True)))
    cfg = load_config(config)
    run = tmp_path / "run"
    train(cfg, run)
    first_id = recorded_run_id(run)
    changed = load_config(config, ["train.lr=0.01"])
    with pytest.raises(SettingsChanged, match=r"train\.lr: 0\.001 -> 0\.01"):
        train(changed, run)
    assert recorded_run_id(run) == first_id  # refused: nothing touched

    summary = train(changed, run, restart_changed=True)
    assert summary["episodes"] == 4
    assert load_config(run / "config.yaml")["train"]["lr"] == 0.01
    assert load_checkpoint(run / "best.pt")["config"]["train"]["lr"] == 0.01
    second_id = recorded_run_id(run)
    assert second_id != first_id
    client = MlflowClient(tracking_uri(cfg))
    old, new = client.get_run(first_id), client.get_run(second_id)
    assert "train.lr: 0.001 -> 0.01" in old.data.tags[SUPERSEDED_TAG]
    assert old.data.tags["run_dir"] != str(run.resolve())
    assert new.data.tags["run_dir"] == str(run.resolve()) and new.info.status == "FINISHED"
    assert new.data.params["train.lr"] == "0.01"
    # a third train call is a no-op on the new run
    assert train(changed, run, restart_changed=True) == summary
    assert recorded_run_id(run) == second_id
