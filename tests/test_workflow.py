"""The real Snakefile: lint, config validation, conda pins, and a tiny end-to-end run."""

from __future__ import annotations

import ast
import json
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
from waiting import HANG_S

from subspace_fsl import paths, report
from subspace_fsl.engine.checkpoint import load_checkpoint

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


def snakemake(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=HANG_S)
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


# the tiny configuration of smoke runs (`snakemake --directory .test`), with its
# output folders moved into each test's tmp_path
TINY = {k: v for k, v in yaml.safe_load((REPO / ".test" / "config.yaml").read_text()).items()
        if k not in ("results_dir", "data_dir")}
RUN_NAMES = {("multisubspace", "w3_k1_S2_l1-0.1_l2-0_anone_seed0"),
             ("multisubspace", "w3_k1_S2_l1-0.1_l2-0.1_anone_seed0"),
             ("protonet", "w3_k1_S1_l1-0_l2-0_anone_seed0"),
             ("protonet", "w3_k1_S1_l1-0_l2-0_t10_anone_seed0")}


def _write_config(tmp: Path, settings: dict, name: str = "tiny.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump({"results_dir": str(tmp / "results"),
                                    "data_dir": str(tmp / "data"), **settings}))
    return path


# --- static checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, "profiles/demo"])
def test_lint_is_clean(profile):
    args = ["--lint"] + (["--profile", profile] if profile else [])
    proc = snakemake(*args, cwd=REPO)
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_the_smoke_command_runs_the_tiny_grid_and_nothing_of_config_yaml():
    """`make smoke` (`snakemake --directory .test`, from the checkout) plans exactly the runs
    the tests run on TINY: .test/config.yaml alone, no baseline of config.yaml merged in."""
    proc = snakemake("-n", "--forceall", "--cores", "2", "--directory", ".test", cwd=REPO)
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    assert counts["train"] == len(RUN_NAMES) and counts["evaluate"] == 2 * len(RUN_NAMES)
    planned = set(re.findall(r"^Job \d+: train (\S+)$", out, flags=re.M))
    assert planned == {f"{method}/{name}" for method, name in RUN_NAMES}
    assert str(REPO / "results" / "test") in out or "../results/test" in out


def _rule_blocks() -> dict[str, str]:
    blocks = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^\s*rule (\w+):\s*$", smk.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            blocks[name] = body
    return blocks


def _thin_call(script: Path) -> ast.Call:
    """The one call of a rule's script: imports, then ``with job(snakemake) as cfg: <call>``."""
    body = ast.parse(script.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    *imports, block = body
    assert all(isinstance(node, ast.ImportFrom) for node in imports), script.name
    assert isinstance(block, ast.With) and len(block.items) == 1, script.name
    entry = block.items[0].context_expr
    assert ast.unparse(entry) == "job(snakemake)", script.name
    assert len(block.body) == 1 and isinstance(block.body[0], ast.Expr), script.name
    assert isinstance(block.body[0].value, ast.Call), script.name
    return block.body[0].value


def test_every_rule_is_one_thin_script_with_log_conda_and_message():
    blocks = _rule_blocks()
    assert {"synthesise", "prepare", "split", "init_tracking", "train", "evaluate", "select",
            "tables", "plots", "explain"} <= set(blocks)
    scripts = REPO / "workflow" / "scripts"
    for name, body in blocks.items():
        assert "log:" in body and "message:" in body, name
        conda = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
        assert conda, name
        env_file = (REPO / "workflow" / "rules" / conda[1]).resolve()
        assert env_file.parent == REPO / "envs" and env_file.is_file(), name
        assert not re.search(r"^\s*(shell|run):", body, flags=re.M), name
        script = re.search(r'script:\s*\n\s*"([^"]+)"', body)
        assert script, name
        path = (REPO / "workflow" / "rules" / script[1]).resolve()
        assert path == scripts / f"{name}.py", name
        # thin: the stage's one public function, called inside the job's glue
        call = _thin_call(path)
        imported = {alias.name for node in ast.parse(path.read_text()).body
                    if isinstance(node, ast.ImportFrom) and node.module.startswith("subspace_fsl")
                    for alias in node.names}
        assert ast.unparse(call.func) in imported, name
    # no script without its rule (cells.smk's grouped rules are named train_cells_{i} and
    # evaluate_cells_{i}_{split}, one per cell group, and share one script each)
    assert {p.stem for p in scripts.glob("*.py")} == set(blocks) | {"train_cells",
                                                                   "evaluate_cells"}
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
    proc = snakemake("-n", "--configfile", str(config), cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error validating config file" in out, out[-3000:]
    assert key in out
    assert "Job stats" not in out


# --- end to end ------------------------------------------------------------------------------


def _changed_run(tmp: Path, config: Path, change: dict) -> dict[str, int]:
    """The jobs a dry run would run with ``change`` on top of ``config``."""
    extra = tmp / "change.yaml"
    extra.write_text(yaml.safe_dump(change))
    proc = snakemake("-n", "--configfile", str(config), str(extra), cwd=tmp)
    return job_counts(proc.stdout + proc.stderr)


def _check_benchmark_in_mlflow_and_chromium(tmp_path: Path, cfg: dict) -> None:
    """The workflow's own store: one parent run, the grid as its children (named by method),
    their params, metrics, models, data set and artifacts; then the UI in headless Chromium."""
    from mlflow.tracking import MlflowClient
    from test_mlflow_benchmark import MlflowServer, chromium, page_dom, visible_text

    from subspace_fsl.benchmark_tracking import view_url

    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    marker = json.loads(paths.tracking_marker(cfg).read_text())
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = client.get_run(marker["parent_run_id"])
    children = {f"{method}/{name}" for method, name in RUN_NAMES}
    assert set(runs) == children | {parent.info.run_name}
    assert parent.data.params["grid.lambda2"] == "[0, 0.1]"
    models = {m.source_run_id for m in client.search_logged_models([experiment.experiment_id])}
    for name in children:
        run = runs[name]
        method, folder = name.split("/")
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert not any(k.startswith(("grid.", "runtime.")) for k in run.data.params)
        assert run.data.params["split.n_novel"] == "3"
        # what the training read, not the evaluations' settings (their own tags say those)
        assert run.data.params["eval.query"] == "2" and "eval.episodes" not in run.data.params
        assert run.data.tags["novel_episodes"] == "6" and run.data.tags["val_episodes"] == "6"
        novel = json.loads((paths.eval_dir(cfg, method, "novel", folder) / "summary.json")
                           .read_text())
        assert run.data.metrics["novel_acc"] == pytest.approx(novel["mean"])
        shapes = json.loads((paths.run_dir(cfg, method, folder) / "eval" / "target-shapes"
                             / "summary.json").read_text())
        assert run.data.metrics["target/shapes/acc"] == pytest.approx(shapes["mean"])
        assert run.data.tags["target-shapes_episodes"] == "6"
        assert "val_eval_acc" in run.data.metrics and run.info.run_id in models
        assert run.inputs.dataset_inputs[0].dataset.name == "tiny"
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"train.log", "data", "eval"} <= top
    parent_files = {a.path for folder in ("tables", "plots")
                    for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"tables/main.csv", "tables/main.md", "tables/paired.csv",
            "plots/training_curves.png"} <= parent_files
    assert any(k.startswith("main/tiny/multisubspace/") for k in parent.data.metrics)
    assert {runs[name].data.tags["chosen"] for name in children} == {"true", "false"}
    assert "main/shapes/protonet/w3_k1_eval1_acc_pct" in parent.data.metrics

    browser = chromium()
    with MlflowServer(uri) as server:
        text = visible_text(page_dom(browser, view_url(experiment.experiment_id, server.base)))
    for name in children:
        assert name in text
        assert f"{runs[name].data.metrics['novel_acc']:.4g}"[:4] in text


@pytest.mark.slow
def test_end_to_end_tiny_grid(tmp_path):
    from mlflow.tracking import MlflowClient

    from subspace_fsl.config import load_config

    config = _write_config(tmp_path, TINY)
    cfg = load_config(config)
    proc = snakemake("--cores", "2", "--configfile", str(config), cwd=tmp_path)
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["train"] == 4 and counts["evaluate"] == 8 and counts["init_tracking"] == 1
    assert counts["evaluate_shot"] == 4  # eval.shots [1, 2]: the novel classes at 2 shots too
    assert counts["pretrain"] == 1  # one pre-training shared by the four runs
    # the cross-domain target (eval.targets.shapes): one cache, every model on it
    assert counts["prepare_target"] == 1 and counts["evaluate_target"] == 4

    # the pre-trained backbone, and every run started from it
    pretrained = load_checkpoint(paths.pretrained_backbone(cfg))
    assert pretrained["config"]["pretrain"] == cfg["pretrain"]
    for method, name in RUN_NAMES:
        ran = yaml.safe_load((paths.run_dir(cfg, method, name) / "config.yaml").read_text())
        assert ran["train"]["init"] == "pretrained"
        log_text = (paths.logs_dir(cfg) / "train" / method / f"{name}.log").read_text()
        assert f"backbone initialised from {paths.pretrained_backbone(cfg)}" in log_text

    # every table, in every format, with its rows
    tables = paths.tables_dir(cfg)
    for name in report.TABLE_NAMES:
        for ext in report.TABLE_FORMATS:
            assert (tables / f"{name}.{ext}").stat().st_size > 0
    main = pd.read_csv(tables / "main.csv")
    target = main[main["evaluated_on"] == "target-shapes"]
    assert sorted(target["method"]) == ["multisubspace", "protonet"]
    assert (target["eval_way"] == 3).all() and (target["eval_shot"] == 1).all()
    for row in target.itertuples():  # the target's cell is its evaluation of the chosen run
        chosen_run = paths.run_name(3, 1, row.n_subspaces, row.lambda1, row.lambda2, 0,
                                    row.tau, augment="none")
        summary = json.loads((paths.run_dir(cfg, row.method, chosen_run) / "eval"
                              / "target-shapes" / "summary.json").read_text())
        assert row.mean == pytest.approx(100 * summary["mean"])
        assert summary["n_classes"] == 4 and summary["classes"] == "all"
    main = main[main["evaluated_on"] == "novel"]
    assert sorted(zip(main["method"], main["eval_shot"], strict=True)) == [
        ("multisubspace", 1), ("multisubspace", 2), ("protonet", 1), ("protonet", 2)]
    assert (main["shot"] == 1).all()
    assert main["mean"].between(0, 100).all() and (main["n_episodes"] == 6).all()
    assert set(main["split_rule"]) == {"class split random (seed 0): 3 base / 3 validation / "
                                       "3 novel classes"}
    md = (tables / "main.md").read_text()
    assert "| multisubspace |" in md and "| protonet |" in md and "3-way 1-shot" in md
    assert "3-way 2-shot (trained 1-shot)" in md
    assert "| target-shapes: 3-way 1-shot |" in md.splitlines()[2]  # the target's column
    assert len(pd.read_csv(tables / "lambdas.csv")) == 2
    assert len(pd.read_csv(tables / "subspaces.csv")) == 1
    assert len(pd.read_csv(tables / "constraints.csv")) == len(report.CONSTRAINT_VARIANTS)
    paired = pd.read_csv(tables / "paired.csv")
    assert list(paired["baseline"]) == ["protonet"] * 3 and (paired["n_episodes"] == 6).all()
    assert list(paired["eval_shot"]) == [1, 2, 1]
    assert list(paired["evaluated_on"]) == ["novel", "novel", "target-shapes"]
    selection = pd.read_csv(paths.selection_path(cfg))
    val = {l2: pd.read_csv(paths.eval_dir(cfg, "multisubspace", "val",
                                          paths.run_name(3, 1, 2, 0.1, l2, 0,
                                                         augment="none"))
                           / "episodes.csv")["accuracy"].mean() for l2 in (0, 0.1)}
    ours = selection[selection["method"] == "multisubspace"]
    assert ours["lambda2"].item() == (0.1 if val[0.1] > val[0] else 0)
    # the baseline's temperature, chosen on validation by the same rule (ties: tau = 1)
    proto_val = {tau: pd.read_csv(paths.eval_dir(cfg, "protonet", "val",
                                                 paths.run_name(3, 1, 1, 0, 0, 0, tau,
                                                                augment="none"))
                                  / "episodes.csv")["accuracy"].mean() for tau in (1, 10)}
    proto = selection[selection["method"] == "protonet"]
    assert proto["tau"].item() == (10 if proto_val[10] > proto_val[1] else 1)
    assert proto["budget"].item() == 2 and ours["budget"].item() == 2
    chosen_tau = paths.format_number(proto["tau"].item())
    # .test trains with train.augment none, not the default policy: the table names it
    assert (f"| protonet: chosen on validation | τ={chosen_tau}, none augmentation (best of 2 "
            "on validation) |") in md
    # the training shot's choice at every evaluation shot
    assert set(main.loc[main["method"] == "protonet", "tau"]) == {proto["tau"].item()}

    # every plot
    plots = paths.plots_dir(cfg)
    for name in report.PLOT_NAMES:
        for ext in report.PLOT_FORMATS:
            assert (plots / f"{name}.{ext}").stat().st_size > 5000

    # the explain step: one row per explained model, its figures, and the lambda1 test table
    from subspace_fsl.explain.outputs import explain_dir, output_files

    assert all(path.is_file() for path in output_files(cfg))
    explained = pd.read_csv(explain_dir(cfg) / "explain.csv")
    assert sorted(explained["method"]) == ["multisubspace", "protonet"]
    assert explained["exact_maps"].all() and explained["specialization"].between(0, 1).all()
    assert (explained["episodes"] == cfg["explain"]["episodes"]).all()
    assert (explain_dir(cfg) / "examples_w3_k1.png").stat().st_size > 5000

    # MLflow: one experiment for the data set, the benchmark's parent run, one child run per
    # grid cell (named method/run) with what it ran and what it scored; then the UI itself
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.run_dir != ''")
    assert {(r.data.tags["run_dir"].split("/")[-2], r.info.run_name.split("/")[1])
            for r in runs} == RUN_NAMES
    _check_benchmark_in_mlflow_and_chromium(tmp_path, cfg)

    # the self-contained HTML report
    html = tmp_path / "report.html"
    snakemake("--configfile", str(config), "--report", str(html), cwd=tmp_path)
    text = html.read_text(errors="replace")
    assert html.stat().st_size > 50_000 and "Paired comparisons" in text
    _check_report_shows_the_tables_inline(text, cfg)

    # a second invocation has nothing to do
    again = snakemake("-n", "--configfile", str(config), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert job_counts(again.stdout + again.stderr) == {}

    # each job's log holds what it said, and its run folder the settings it ran with
    protonet = paths.run_dir(cfg, "protonet", "w3_k1_S1_l1-0_l2-0_anone_seed0")
    train_log = (paths.logs_dir(cfg) / "train" / "protonet" / f"{protonet.name}.log").read_text()
    assert "training finished" in train_log and "Traceback" not in train_log
    assert "novel accuracy" in (paths.logs_dir(cfg) / "evaluate" / "protonet"
                                / f"{protonet.name}.novel.log").read_text()
    selection_log = (paths.logs_dir(cfg) / "select.log").read_text()
    assert f"select done: {paths.selection_path(cfg)}" in selection_log
    ran = yaml.safe_load((protonet / "config.yaml").read_text())
    assert ran["model"]["head"] == "protonet" and ran["train"]["shot"] == 1
    assert ran["eval"] == cfg["eval"] and ran["runtime"]["threads"] == 1  # the job's threads

    # a changed setting re-runs exactly the jobs that read it (and what is made from them)
    assert _changed_run(tmp_path, config, {"runtime": {"progress": "log", "device": "auto"},
                                           "tracking": {"enabled": False}}) == {}
    # (the benchmark's MLflow parent run is per configuration: init_tracking re-runs, and
    # re-trains nothing, through the train rule's ancient input)
    report_jobs = {"select": 1, "tables": 1, "plots": 1, "explain": 1, "report_pages": 1,
                   "all": 1}
    assert _changed_run(tmp_path, config, {"grid": {"lambda2": [0, 0.1, 0.3]}}) == {
        "init_tracking": 1, "train": 1, "evaluate": 2, "evaluate_shot": 1, "evaluate_target": 1,
        **report_jobs}
    assert _changed_run(tmp_path, config, {"split": {"seed": 1}}) == {
        "split": 1, "pretrain": 1, "init_tracking": 1, "train": 4, "evaluate": 8,
        "evaluate_shot": 4, "evaluate_target": 4, **report_jobs}
    assert _changed_run(tmp_path, config, {"train": {"lr": 0.01}}) == {
        "init_tracking": 1, "train": 4, "evaluate": 8, "evaluate_shot": 4,
        "evaluate_target": 4, **report_jobs}
    assert _changed_run(tmp_path, config, {"pretrain": {"lr": 0.01}}) == {
        "pretrain": 1, "init_tracking": 1, "train": 4, "evaluate": 8, "evaluate_shot": 4,
        "evaluate_target": 4, **report_jobs}
    # a target's own setting re-runs its evaluations (and the report), no other evaluation
    target_change = _changed_run(tmp_path, config,
                                 {"eval": {"targets": {"shapes": {"episodes": 4}}}})
    assert target_change["evaluate_target"] == 4 and "prepare_target" not in target_change
    assert not {"train", "evaluate", "evaluate_shot"} & set(target_change)
    # evaluation-only settings re-run evaluations, never a training (the validation inside
    # training reads eval.query, eval.seed and eval.batch_size only)
    assert _changed_run(tmp_path, config, {"eval": {"episodes": 8}}) == {
        "init_tracking": 1, "evaluate": 8, "evaluate_shot": 4, "evaluate_target": 4,
        **report_jobs}
    assert _changed_run(tmp_path, config, {"eval": {"shots": [1, 2, 3]}}) == {
        "init_tracking": 1, "evaluate_shot": 4, **report_jobs}
    assert _changed_run(tmp_path, config, {"eval": {"query": 1}})["train"] == 4

    # deleting one model re-runs exactly what depends on it
    shutil.rmtree(paths.run_dir(cfg, "protonet", "w3_k1_S1_l1-0_l2-0_anone_seed0"))
    dry = snakemake("-n", "--configfile", str(config), cwd=tmp_path)
    assert job_counts(dry.stdout + dry.stderr) == {"train": 1, "evaluate": 2, "evaluate_shot": 1,
                                                   "evaluate_target": 1, **report_jobs}
    assert "protonet/w3_k1_S1_l1-0_l2-0_anone_seed0" in dry.stdout + dry.stderr
    assert "protonet/w3_k1_S1_l1-0_l2-0_t10_anone_seed0/best.pt" not in re.sub(
        r"input:.*", "", dry.stdout + dry.stderr)
    assert "multisubspace/w3_k1" not in re.sub(r"input:.*", "", dry.stdout + dry.stderr)

    # reproducible by construction: a configuration run again from nothing, in another folder,
    # writes the same tables, byte for byte, as the runs above give it (tables only: no plots,
    # explain, report). The configuration is the grid cut to one run a method, those above
    # that are still there, without tracking: the runs above need no training or evaluation
    # job, and the run from nothing is half the grid's jobs.
    protonet = {**TINY["grid"]["baselines"]["protonet"], "grid": {"tau": [10]}}
    reduced = {**TINY, "grid": {**TINY["grid"], "lambda2": [0],
                                "baselines": {"protonet": protonet}},
               "tracking": {"enabled": False}}

    def table_files(cfg: dict) -> list[Path]:
        return [paths.tables_dir(cfg) / f"{name}.{ext}" for name in report.TABLE_NAMES
                for ext in report.TABLE_FORMATS]

    reduced_here = _write_config(tmp_path, reduced, "reduced.yaml")
    # targets before --configfile, which takes every following argument as a config file
    proc = snakemake("--cores", "2", *map(str, table_files(cfg)), "--configfile",
                     str(reduced_here), cwd=tmp_path)
    # (and init_tracking: the benchmark's parent run is per configuration)
    assert job_counts(proc.stdout + proc.stderr) == {"init_tracking": 1, "select": 1,
                                                     "tables": 1}
    fresh = tmp_path / "again"
    fresh.mkdir()
    again_cfg = load_config(_write_config(fresh, reduced))
    proc = snakemake("--cores", "2", *map(str, table_files(again_cfg)), "--configfile",
                     str(fresh / "tiny.yaml"), cwd=fresh)
    assert job_counts(proc.stdout + proc.stderr)["train"] == 2
    for here, there in zip(table_files(cfg), table_files(again_cfg), strict=True):
        assert there.read_bytes() == here.read_bytes(), here.name


def _check_report_shows_the_tables_inline(text: str, cfg: dict) -> None:
    """The report's first page holds the headline (every main-table cell of the method and
    its best baseline), and the main, paired and explain tables are HTML items (shown in the
    report, not offered as downloads) whose cells are the Markdown tables' cells."""
    import base64
    import html as html_lib

    pages = {}
    for match in re.finditer(r"data:text/html;charset=[^;]+;filename=([^;]+);base64,"
                             r"([A-Za-z0-9+/=]+)", text):
        pages[match[1]] = base64.b64decode(match[2]).decode()
    assert {"main.html", "paired.html", "explain.html", "explain_paired.html"} <= set(pages)
    main = pd.read_csv(paths.tables_dir(cfg) / "main.csv")
    for row in main.itertuples():
        assert f"{row.mean:.2f} ± {row.ci95:.2f}" in pages["main.html"], row
    assert "<table>" in pages["paired.html"] and "protonet" in pages["paired.html"]
    assert "<table>" in pages["explain.html"]
    first_page = html_lib.unescape(text)
    assert "Headline: novel-class accuracy (%) on tiny" in first_page
    assert "3-way 2-shot (trained 1-shot)" in first_page


def _check_frozen_runs(cfg: dict) -> None:
    """Every run of the frozen grid trained its head on the feature table (the backbone is
    the pre-trained one, untouched) and was evaluated on it."""
    table = load_checkpoint(paths.features_path(cfg))
    assert table["flipped"] is None  # .test trains with augment none, flip_support never
    pretrained = load_checkpoint(paths.pretrained_backbone(cfg))["backbone"]
    for method, name in RUN_NAMES:
        best = load_checkpoint(paths.run_dir(cfg, method, name) / "best.pt")
        assert best["features_stamp"] == table["stamp"]
        assert all(best["model"][f"backbone.{k}"].equal(v) for k, v in pretrained.items())
        summary = json.loads((paths.eval_dir(cfg, method, "novel", name) / "summary.json")
                             .read_text())
        assert summary["protocol"] == "frozen" and summary["features_stamp"] == table["stamp"]


def _novel_accuracies(cfg: dict) -> dict[str, object]:
    """What the frozen grid scored at its training shot: every run's per-episode novel
    accuracies, the selection, and the main and paired tables' cells on the novel classes."""
    main = pd.read_csv(paths.tables_dir(cfg) / "main.csv")
    paired = pd.read_csv(paths.tables_dir(cfg) / "paired.csv")
    novel = (main["evaluated_on"] == "novel") & (main["eval_shot"] == main["shot"])
    paired_novel = (paired["evaluated_on"] == "novel") & (paired["eval_shot"] == paired["shot"])
    return {
        "episodes": {f"{method}/{name}": pd.read_csv(paths.eval_dir(cfg, method, "novel", name)
                                                     / "episodes.csv")["accuracy"].tolist()
                     for method, name in sorted(RUN_NAMES)},
        "selection": pd.read_csv(paths.selection_path(cfg))[
            ["method", "lambda1", "lambda2", "tau"]].to_dict("records"),
        "main": main.loc[novel, ["method", "lambda2", "tau", "mean", "ci95",
                                 "n_episodes"]].to_dict("records"),
        "paired": paired.loc[paired_novel, ["method", "baseline", "mean_diff", "ci95",
                                            "p_wilcoxon", "p_ttest"]].to_dict("records"),
    }


@pytest.mark.slow
def test_end_to_end_tiny_grid_frozen(tmp_path):
    """The tiny grid with train.backbone: frozen: one embed job between pretrain and the
    runs, heads trained on its feature file, tables that say so; a changed backbone or cache
    re-runs embed and everything trained on its features. Then the same runs with their cells
    batched (train.batch_cells: one train and one evaluation job a group) on the same
    features score the same: per-episode accuracies, selection and table cells equal exactly
    (the stacked heads equal the single ones within float noise, which leaves every
    prediction as it was)."""
    from subspace_fsl.config import load_config

    config = _write_config(tmp_path, {**TINY, "train": {**TINY["train"], "backbone": "frozen"}})
    cfg = load_config(config)
    proc = snakemake("--cores", "2", "--configfile", str(config), cwd=tmp_path)
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["pretrain"] == 1 and counts["embed"] == 1 and counts["train"] == 4
    assert counts["evaluate"] == 8 and counts["evaluate_shot"] == 4
    _check_frozen_runs(cfg)
    tables = paths.tables_dir(cfg)
    for name in report.TABLE_NAMES:
        for ext in report.TABLE_FORMATS:
            assert (tables / f"{name}.{ext}").stat().st_size > 0
    main = pd.read_csv(tables / "main.csv")
    assert len(main) == 6 and set(main["protocol"]) == {"frozen"}  # 2 methods x 3 columns
    assert "Protocol frozen" in (tables / "main.md").read_text()
    assert set(pd.read_csv(paths.selection_path(cfg))["protocol"]) == {"frozen"}
    # the frozen jobs read the feature file, not the cache
    dry = snakemake("-n", "--forcerun", "embed", "--configfile", str(config), cwd=tmp_path)
    report_jobs = {"select": 1, "tables": 1, "plots": 1, "explain": 1, "report_pages": 1,
                   "all": 1}
    assert job_counts(dry.stdout + dry.stderr) == {
        "embed": 1, "train": 4, "evaluate": 8, "evaluate_shot": 4, "evaluate_target": 4,
        **report_jobs}
    assert _changed_run(tmp_path, config, {"pretrain": {"lr": 0.01}}) == {
        "pretrain": 1, "embed": 1, "init_tracking": 1, "train": 4, "evaluate": 8,
        "evaluate_shot": 4, "evaluate_target": 4, **report_jobs}
    changed = _changed_run(tmp_path, config, {"dataset": {"image_size": 28}})
    assert changed["embed"] == 1 and changed["train"] == 4
    # settings frozen cannot honour stop the workflow at once, naming the setting
    for change in ({"train": {"augment": "standard"}}, {"train": {"init": "scratch"}}):
        bad = _write_config(tmp_path, {**TINY, "train": {**TINY["train"], "backbone": "frozen",
                                                        **change["train"]}}, "bad.yaml")
        proc = snakemake("-n", "--configfile", str(bad), cwd=tmp_path, check=False)
        assert proc.returncode != 0 and "train.backbone=frozen" in proc.stdout + proc.stderr

    # the same runs batched, on the same feature file (pretrain and embed are kept), at the
    # training shot (no other shot, no target, no tracking: nothing that batching changes)
    alone = _novel_accuracies(cfg)
    for method, name in RUN_NAMES:
        shutil.rmtree(paths.run_dir(cfg, method, name))
    shutil.rmtree(tables)
    frozen = _write_config(tmp_path, {
        **TINY, "train": {**TINY["train"], "backbone": "frozen", "batch_cells": True},
        "eval": {k: v for k, v in TINY["eval"].items() if k not in ("shots", "targets")},
        "tracking": {"enabled": False}}, "batched.yaml")
    targets = [str(tables / f"{name}.csv") for name in ("main", "paired")]
    proc = snakemake("--cores", "2", *targets, "--configfile", str(frozen), cwd=tmp_path)
    counts = job_counts(proc.stdout + proc.stderr)
    # one group a method (its two lambda2 values, its two tau values): one train job, one
    # evaluation job a split
    assert sorted(k for k in counts if k.startswith("train")) == ["train_cells_0",
                                                                  "train_cells_1"]
    assert sorted(k for k in counts if k.startswith("evaluate")) == [
        f"evaluate_cells_{i}_{split}" for i in (0, 1) for split in ("novel", "val")]
    assert not {"pretrain", "embed"} & set(counts)
    _check_frozen_runs(cfg)
    assert _novel_accuracies(cfg) == alone
