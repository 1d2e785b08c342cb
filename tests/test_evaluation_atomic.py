"""An evaluation replaces an earlier one as a whole: killed at any stage of a re-evaluation
(SIGTERM or SIGKILL, each sent on an event: a progress line on the pipe, the new folder
appearing), the earlier evaluation is left complete and current, or the new one is there,
never neither. A derived file that cannot be read is named in one line, and the workflow
re-runs the job that makes it instead of reporting "Nothing to be done"."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_cli_errors import error_line
from test_workflow import TINY, _write_config, job_counts, snakemake
from tiny import cli_settings

from subspace_fsl.config import load_config, yaml_load
from subspace_fsl.data.cache import prepare
from subspace_fsl.engine.train import train
from subspace_fsl.evaluation_record import check_evaluation
from subspace_fsl.readers import UnreadableFileError

CLI = [sys.executable, "-m", "subspace_fsl.cli"]
FILES = {"episodes.csv", "config.yaml", "summary.json"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("atomic")
    (root / "tiny.yaml").write_text(yaml.safe_dump(cli_settings(root)))
    cfg = load_config(root / "tiny.yaml")
    prepare(cfg, progress=False)
    train(cfg, root / "run")
    return root


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                             "SUBSPACE_FSL_DEBUG")}


def evaluate(run: Path, *overrides: str) -> subprocess.Popen[str]:
    args = [a for o in overrides for a in ("--set", o)]
    return subprocess.Popen([*CLI, "evaluate", "--run", str(run), *args], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())


def wait_for_line(proc: subprocess.Popen[str], word: str) -> str:
    """Read the command's stderr until a line holds ``word`` (an event, not a deadline)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if word in line:
            return line
    raise AssertionError(f"the command ended (exit {proc.wait()}) without printing {word!r}")


def assert_complete_and_current(run: Path, episodes: int) -> None:
    """eval/novel holds one whole evaluation of ``episodes`` episodes, current for them."""
    folder = run / "eval" / "novel"
    assert {p.name for p in folder.iterdir()} == FILES
    summary = json.loads((folder / "summary.json").read_text())
    used = yaml_load((folder / "config.yaml").read_text())
    assert summary["episodes"] == episodes == used["eval"]["episodes"]
    assert len(pd.read_csv(folder / "episodes.csv")) == episodes
    check_evaluation(folder, used, run / "best.pt", "novel",
                     Path(used["results_dir"]) / "splits" / "tiny.json")


def test_an_interrupted_re_evaluation_keeps_the_finished_one(workspace: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(workspace / "run", run)
    first = evaluate(run)
    assert first.wait() == 0, first.stderr and first.stderr.read()
    assert_complete_and_current(run, 4)

    # killed as the new evaluation starts its episodes: by SIGTERM, then by SIGKILL
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = evaluate(run, "eval.episodes=3000")
        wait_for_line(proc, "evaluating")
        proc.send_signal(sig)
        proc.wait()
        assert_complete_and_current(run, 4)

    # killed the moment the new evaluation's folder appears beside the old one: either the
    # old one is still there or the new one already replaced it
    proc = evaluate(run, "eval.episodes=6")
    wait_for_line(proc, "evaluating")
    while not any(p.name.startswith(".novel.build-") for p in (run / "eval").iterdir()):
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    episodes = json.loads((run / "eval" / "novel" / "summary.json").read_text())["episodes"]
    assert episodes in (4, 6)
    assert_complete_and_current(run, episodes)

    # and a re-evaluation that finishes replaces it as a whole
    last = evaluate(run, "eval.episodes=5")
    assert last.wait() == 0
    assert_complete_and_current(run, 5)
    assert [p.name for p in (run / "eval").iterdir() if p.name.startswith(".novel.old")] == []


def test_an_evaluation_does_not_replace_a_folder_of_other_files(workspace: Path, tmp_path: Path):
    (tmp_path / "mine.txt").write_text("keep me\n")
    proc = subprocess.run([*CLI, "evaluate", "--run", str(workspace / "run"),
                           "--out", str(tmp_path)], capture_output=True, text=True, env=_env())
    error_line(proc, str(tmp_path), "mine.txt")
    assert (tmp_path / "mine.txt").read_text() == "keep me\n"


def test_an_unreadable_summary_is_named(workspace: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(workspace / "run", run)
    assert evaluate(run).wait() == 0
    summary = run / "eval" / "novel" / "summary.json"
    summary.write_text(summary.read_text()[:60])
    cfg = yaml_load((run / "eval" / "novel" / "config.yaml").read_text())
    with pytest.raises(UnreadableFileError, match=str(summary)):
        check_evaluation(summary.parent, cfg, run / "best.pt", "novel",
                         Path(cfg["results_dir"]) / "splits" / "tiny.json")
    # a truncated train_summary.json of a finished run: one line naming it
    (run / "train_summary.json").write_text('{"best_val_acc": 0.')
    proc = subprocess.run([*CLI, "train", "--config", str(workspace / "tiny.yaml"),
                           "--out", str(run)], capture_output=True, text=True, env=_env())
    error_line(proc, str(run / "train_summary.json"))


def test_the_workflow_re_runs_an_evaluation_whose_summary_is_truncated(tmp_path: Path):
    """One run of the tiny benchmark evaluated on the novel classes; its summary.json cut in
    half: the workflow plans that evaluation again (it said "Nothing to be done") and the
    run makes a readable one."""
    # from scratch: no pretrain job before the one training (its init is not what is tested)
    config = _write_config(tmp_path, {**TINY, "train": {**TINY["train"], "init": "scratch"},
                                      "tracking": {"enabled": False}})
    cfg = load_config(config)
    from subspace_fsl import grid, paths

    run = grid.all_runs(cfg)[0]
    target = paths.eval_dir(cfg, run.method, "novel", run.name) / "summary.json"
    common = ("--configfile", str(config), "--cores", "1")
    snakemake(*common, str(target), cwd=tmp_path)
    assert "Nothing to be done" in snakemake(*common, "-n", str(target), cwd=tmp_path).stdout
    target.write_text(target.read_text()[:80])
    plan = snakemake(*common, "-n", str(target), cwd=tmp_path)
    assert str(target) in plan.stderr and "cannot be read" in plan.stderr
    assert job_counts(plan.stdout) == {"evaluate": 1}
    snakemake(*common, str(target), cwd=tmp_path)
    assert json.loads(target.read_text())["split"] == "novel"
