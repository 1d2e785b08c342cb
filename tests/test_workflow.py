"""The real Snakefile: lint, config validation, conda pins, and a tiny end-to-end run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tomllib
import yaml

from subspace_fsl import paths, report

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
    env["OMP_NUM_THREADS"] = "1"
    return env


def snakemake(*args: str, cwd: Path, check: bool = True, timeout: int = 600
              ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a (dry) run: rule -> number of jobs."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    counts.pop("total", None)
    return counts


TINY = {
    "dataset": {"name": "tiny", "source": "synthetic", "image_size": 32,
                "synthetic": {"classes": 9, "images_per_class": 8, "size": 32, "seed": 0}},
    "split": {"rule": "random", "counts": [3, 3, 3], "seed": 0},
    "model": {"subspace_dim": 8},
    "train": {"query": 2, "max_episodes": 4, "val_every": 2, "val_episodes": 2, "patience": 2,
              "checkpoint_every": 2, "log_every": 2, "lr_schedule": "none", "augment": False},
    "eval": {"episodes": 6, "query": 2, "batch_size": 64},
    "grid": {"way": [3], "shot": [1], "n_subspaces": [2], "lambda1": [0.1],
             "lambda2": [0, 0.1], "seeds": [0], "tau": [1],
             # the smallest baseline grid: two temperatures, chosen on validation
             "baselines": {"protonet": {"head": "protonet", "n_subspaces": 1,
                                        "lambda1": 0, "lambda2": 0,
                                        "grid": {"tau": [1, 10]}}}},
    "runtime": {"device": "cpu", "progress": "none", "malloc_tuning": False},
}
RUN_NAMES = {("multisubspace", "w3_k1_S2_l1-0.1_l2-0_seed0"),
             ("multisubspace", "w3_k1_S2_l1-0.1_l2-0.1_seed0"),
             ("protonet", "w3_k1_S1_l1-0_l2-0_seed0"),
             ("protonet", "w3_k1_S1_l1-0_l2-0_t10_seed0")}


def _write_config(tmp: Path, settings: dict, name: str = "tiny.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump({"results_dir": str(tmp / "results"),
                                    "data_dir": str(tmp / "data"), **settings}))
    return path


# --- static checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, "profiles/demo"])
def test_lint_is_clean(profile):
    args = ["--lint"] + (["--profile", profile] if profile else [])
    proc = snakemake(*args, cwd=REPO, timeout=300)
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def _rule_blocks() -> dict[str, str]:
    blocks = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^\s*rule (\w+):\s*$", smk.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            blocks[name] = body
    return blocks


def test_every_rule_has_log_conda_and_one_package_call():
    blocks = _rule_blocks()
    assert {"synthesise", "prepare", "split", "init_tracking", "train", "evaluate", "select",
            "tables", "plots"} <= set(blocks)
    for name, body in blocks.items():
        assert "log:" in body, name
        conda = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
        assert conda, name
        env_file = (REPO / "workflow" / "rules" / conda[1]).resolve()
        assert env_file.parent == REPO / "envs" and env_file.is_file(), name
        shell = re.search(r"shell:\s*\n((?:\s+\".*\"\n?)+)", body)
        assert shell, name
        assert shell[1].count("subspace-fsl ") == 1, name  # thin: one call into the package
    for name in ("train", "evaluate"):
        assert "benchmark:" in blocks[name] and "threads:" in blocks[name]
        assert "resources:" in blocks[name]


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower()


def test_conda_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_requirement_name(d): d.replace(" ", "") for d in project["dependencies"]}
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env_file in envs:
        env = yaml.safe_load(env_file.read_text())
        deps = env["dependencies"]
        python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
        assert python.replace("python", "") == project["requires-python"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        pins = {_requirement_name(p): p.replace(" ", "") for p in pip if not p.startswith("-")}
        assert pins == wanted, env_file.name
        assert "-e .." in pip  # the package itself


@pytest.mark.parametrize(("settings", "key"), [
    ({"train": {"shto": 1}}, "shto"),
    ({"grid": {"shot": "five"}}, "shot"),
    ({"train": {"way": 1}}, "way"),
])
def test_invalid_config_stops_with_the_key_named(tmp_path, settings, key):
    config = _write_config(tmp_path, {**TINY, **settings}, "bad.yaml")
    proc = snakemake("-n", "--configfile", str(config), cwd=tmp_path, check=False,
                     timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error validating config file" in out, out[-3000:]
    assert key in out
    assert "Job stats" not in out


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_tiny_grid(tmp_path):
    from mlflow.tracking import MlflowClient

    from subspace_fsl.config import load_config

    config = _write_config(tmp_path, TINY)
    cfg = load_config(config)
    proc = snakemake("--cores", "2", "--configfile", str(config), cwd=tmp_path, timeout=900)
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["train"] == 4 and counts["evaluate"] == 8 and counts["init_tracking"] == 1

    # every table, in every format, with its rows
    tables = paths.tables_dir(cfg)
    for name in report.TABLE_NAMES:
        for ext in report.TABLE_FORMATS:
            assert (tables / f"{name}.{ext}").stat().st_size > 0
    main = pd.read_csv(tables / "main.csv")
    assert sorted(main["method"]) == ["multisubspace", "protonet"]
    assert main["mean"].between(0, 100).all() and (main["n_episodes"] == 6).all()
    assert set(main["split_rule"]) == {"class split random (seed 0): 3 base / 3 validation / "
                                       "3 novel classes"}
    md = (tables / "main.md").read_text()
    assert "| multisubspace |" in md and "| protonet |" in md and "3-way 1-shot" in md
    assert len(pd.read_csv(tables / "lambdas.csv")) == 2
    assert len(pd.read_csv(tables / "subspaces.csv")) == 1
    assert len(pd.read_csv(tables / "constraints.csv")) == len(report.CONSTRAINT_VARIANTS)
    paired = pd.read_csv(tables / "paired.csv")
    assert list(paired["baseline"]) == ["protonet"] and (paired["n_episodes"] == 6).all()
    selection = pd.read_csv(paths.selection_path(cfg))
    val = {l2: pd.read_csv(paths.eval_dir(cfg, "multisubspace", "val",
                                          paths.run_name(3, 1, 2, 0.1, l2, 0))
                           / "episodes.csv")["accuracy"].mean() for l2 in (0, 0.1)}
    ours = selection[selection["method"] == "multisubspace"]
    assert ours["lambda2"].item() == (0.1 if val[0.1] > val[0] else 0)
    # the baseline's temperature, chosen on validation by the same rule (ties: tau = 1)
    proto_val = {tau: pd.read_csv(paths.eval_dir(cfg, "protonet", "val",
                                                 paths.run_name(3, 1, 1, 0, 0, 0, tau))
                                  / "episodes.csv")["accuracy"].mean() for tau in (1, 10)}
    proto = selection[selection["method"] == "protonet"]
    assert proto["tau"].item() == (10 if proto_val[10] > proto_val[1] else 1)
    assert proto["budget"].item() == 2 and ours["budget"].item() == 2
    chosen_tau = paths.format_number(proto["tau"].item())
    assert f"| protonet: chosen on validation | τ={chosen_tau} (best of 2 on validation) |" in md
    assert main.loc[main["method"] == "protonet", "tau"].item() == proto["tau"].item()

    # every plot
    plots = paths.plots_dir(cfg)
    for name in report.PLOT_NAMES:
        for ext in report.PLOT_FORMATS:
            assert (plots / f"{name}.{ext}").stat().st_size > 5000

    # MLflow: one experiment for the data set, one run per grid cell
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {(r.data.tags["run_dir"].split("/")[-2], r.info.run_name) for r in runs} == RUN_NAMES
    for run in runs:
        assert any("novel" in key for key in run.data.metrics), run.data.metrics

    # the self-contained HTML report
    html = tmp_path / "report.html"
    snakemake("--configfile", str(config), "--report", str(html), cwd=tmp_path, timeout=300)
    text = html.read_text(errors="replace")
    assert html.stat().st_size > 50_000 and "Paired comparisons" in text

    # a second invocation has nothing to do
    again = snakemake("-n", "--configfile", str(config), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert job_counts(again.stdout + again.stderr) == {}

    # deleting one model re-runs exactly what depends on it
    shutil.rmtree(paths.run_dir(cfg, "protonet", "w3_k1_S1_l1-0_l2-0_seed0"))
    dry = snakemake("-n", "--configfile", str(config), cwd=tmp_path)
    assert job_counts(dry.stdout + dry.stderr) == {
        "train": 1, "evaluate": 2, "select": 1, "tables": 1, "plots": 1, "all": 1}
    assert "protonet/w3_k1_S1_l1-0_l2-0_seed0" in dry.stdout + dry.stderr
    assert "protonet/w3_k1_S1_l1-0_l2-0_t10_seed0/best.pt" not in re.sub(
        r"input:.*", "", dry.stdout + dry.stderr)
    assert "multisubspace/w3_k1" not in re.sub(r"input:.*", "", dry.stdout + dry.stderr)
