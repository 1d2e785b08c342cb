"""The benchmark as MLflow shows it, on a small real grid (init-tracking -> 3 training runs ->
val and novel evaluations -> select -> tables -> plots, through the command line): the parent
run and its children, names, params, metrics, the model, the data set, artifacts, system
metrics, a restarted run folder, and the UI in a real (headless) Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from waiting import HANG_S, wait_for_http

from subspace_fsl import grid, paths, report
from subspace_fsl.benchmark_tracking import SHARED_VIEW_TAG, view_state, view_url
from subspace_fsl.cli import main
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import ImageCache, prepare
from subspace_fsl.tracking import (
    PARENT_TAG,
    open_run,
    recorded_run_id,
    run_params,
    tracking_uri,
)

SETTINGS = {
    "dataset": {"name": "tiny", "image_size": 32,
                "synthetic": {"classes": 8, "images_per_class": 10, "size": 32}},
    "split": {"counts": [4, 2, 2]},
    "model": {"backbone": "conv4", "subspace_dim": 8},
    "train": {"query": 2, "max_episodes": 6, "val_every": 3, "val_episodes": 2, "log_every": 3,
              "checkpoint_every": 3, "patience": 100, "augment": "none"},
    "eval": {"query": 2, "episodes": 5, "batch_size": 32, "shots": [1, 2]},
    "grid": {"way": [2], "shot": [1], "n_subspaces": [2], "lambda1": [0.1],
             "lambda2": [0, 0.1], "tau": [1], "seeds": [0],
             "baselines": {"protonet": {"head": "protonet", "n_subspaces": 1, "lambda1": 0,
                                        "lambda2": 0}}},
    "runtime": {"threads": 1, "progress": "log", "device": "cpu", "malloc_tuning": False},
}
CHILDREN = {"multisubspace/w2_k1_S2_l1-0.1_l2-0_anone_seed0",
            "multisubspace/w2_k1_S2_l1-0.1_l2-0.1_anone_seed0",
            "protonet/w2_k1_S1_l1-0_l2-0_anone_seed0"}


@pytest.fixture(autouse=True)
def _default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _run_grid(root: Path) -> Path:
    """The workflow's stages, in order, as its rules call them (one process)."""
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"results_dir": str(root / "results"),
                                      "data_dir": str(root / "data"), **SETTINGS}))
    cfg = load_config(config)
    prepare(cfg, progress=False)
    base = ["--config", str(config)]
    assert main(["split", *base]) == 0
    assert main(["init-tracking", *base]) == 0
    for run in grid.all_runs(cfg):
        # what the train rule passes: the run's own settings, not the grid, and the
        # evaluation-only eval settings its config.yaml records (snakemake_job.job_config)
        run_settings = grid.run_settings(cfg, run.method, run.name)
        run_settings["eval"] = {**grid.evaluation_only(cfg)["eval"], **run_settings["eval"]}
        settings = [f"--set={k}={json.dumps(v)}" for k, v in run_settings.items()]
        out = paths.run_dir(cfg, run.method, run.name)
        assert main(["train", *base, *settings, "--out", str(out)]) == 0
        for split in paths.SPLITS:
            assert main(["evaluate", "--run", str(out), "--split", split]) == 0
        # eval.shots: the same model on 2-shot novel episodes (another main-table row)
        assert main(["evaluate", "--run", str(out), "--split", "novel", "--shot", "2"]) == 0
    for stage in ("select", "tables", "plots"):
        assert main([stage, *base]) == 0
    return config


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    try:
        config = _run_grid(tmp_path_factory.mktemp("bench"))
    finally:
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    cfg = load_config(config)
    # the store's own model registry (MLflow's default registry is another: ./mlflow.db)
    client = MlflowClient(tracking_uri(cfg), registry_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    marker = json.loads(paths.tracking_marker(cfg).read_text())
    return {"config": config, "cfg": cfg, "client": client, "experiment": experiment,
            "runs": {r.info.run_name: r for r in runs}, "marker": marker}


def _children(bench: dict) -> dict:
    return {name: run for name, run in bench["runs"].items() if name in CHILDREN}


def test_one_parent_per_benchmark_and_every_training_run_its_child(bench):
    runs, marker = bench["runs"], bench["marker"]
    parent_id = marker["parent_run_id"]
    parents = [r for r in runs.values() if r.data.tags.get("subspace_fsl.kind") == "benchmark"]
    assert [p.info.run_id for p in parents] == [parent_id]
    assert parents[0].info.run_name.startswith("benchmark/tiny-")
    assert set(runs) == CHILDREN | {parents[0].info.run_name}
    cfg = bench["cfg"]
    for name, run in _children(bench).items():
        assert run.data.tags[PARENT_TAG] == parent_id
        assert run.info.status == "FINISHED" and run.info.end_time is not None
        method, folder = name.split("/")
        assert run.data.tags["method"] == method
        assert run.data.tags["run_dir"] == str(paths.run_dir(cfg, method, folder).resolve())
        assert recorded_run_id(paths.run_dir(cfg, method, folder)) == run.info.run_id
    # the parent holds the grid as it ran, and nothing of one cell
    params = parents[0].data.params
    assert params["grid.lambda2"] == "[0, 0.1]" and params["grid.shot"] == "[1]"
    assert params["grid.baselines.protonet.head"] == "protonet"
    assert "train.lambda2" not in params and "model.head" not in params


def test_child_params_are_what_ran_and_runtime_settings_are_tags(bench):
    for name, run in _children(bench).items():
        params, tags = run.data.params, run.data.tags
        assert not any(k.startswith(("grid.", "runtime.", "tracking.")) for k in params), name
        assert params["split.n_base"] == "4" and params["split.n_val"] == "2"
        assert params["split.n_novel"] == "2"
        assert tags["runtime.device"] == "cpu" and tags["tracking.system_metrics"] == "True"
        # synthetic source: its generator settings, not the CUB archive's
        assert params["dataset.synthetic.classes"] == "8" and "dataset.url" not in params
    protonet = bench["runs"]["protonet/w2_k1_S1_l1-0_l2-0_anone_seed0"].data.params
    assert protonet["model.head"] == "protonet" and protonet["model.n_subspaces"] == "1"
    method = bench["runs"]["multisubspace/w2_k1_S2_l1-0.1_l2-0.1_anone_seed0"].data.params
    assert method["train.lambda2"] == "0.1" and method["model.n_subspaces"] == "2"


def test_run_params_leave_out_what_a_real_data_set_does_not_read():
    cfg = load_config(None, ["dataset.source=cub", "dataset.name=cub"])
    params = run_params(cfg, {"base": ["a"] * 3, "val": ["b"] * 2, "novel": ["c"]})
    assert not any(k.startswith("dataset.synthetic") for k in params)
    assert params["dataset.url"] == "official" and params["split.n_novel"] == "1"
    assert not any(k.startswith(("grid.", "runtime.", "tracking.")) for k in params)


def test_children_log_novel_and_validation_accuracy_and_the_episodes_digest(bench):
    cfg, digests = bench["cfg"], set()
    for name, run in _children(bench).items():
        method, folder = name.split("/")
        novel = json.loads((paths.eval_dir(cfg, method, "novel", folder) / "summary.json")
                           .read_text())
        val = json.loads((paths.eval_dir(cfg, method, "val", folder) / "summary.json")
                         .read_text())
        metrics = run.data.metrics
        assert metrics["novel_acc"] == pytest.approx(novel["mean"])
        assert metrics["novel_ci95"] == pytest.approx(novel["ci95"])
        assert metrics["val_eval_acc"] == pytest.approx(val["mean"])
        episodes = pd.read_csv(paths.eval_dir(cfg, method, "novel", folder) / "episodes.csv")
        assert novel["mean"] == pytest.approx(episodes["accuracy"].mean())  # independent
        assert run.data.tags["novel_episodes_digest"] == novel["episodes_digest"]
        digests.add(run.data.tags["novel_episodes_digest"])
    assert len(digests) == 1  # every method was scored on the same episodes


def test_the_parent_holds_selection_tables_paired_tests_plots_and_main_numbers(bench):
    client, parent_id = bench["client"], bench["marker"]["parent_run_id"]
    artifacts = {a.path for folder in ("tables", "plots", "selection")
                 for a in client.list_artifacts(parent_id, folder)}
    for name in report.TABLE_NAMES:  # paired = the paired tests
        assert {f"tables/{name}.csv", f"tables/{name}.md"} <= artifacts
    for name in report.PLOT_NAMES:
        assert f"plots/{name}.png" in artifacts
    assert "selection/tiny.csv" in artifacts
    parent = client.get_run(parent_id)
    cfg = bench["cfg"]
    table = pd.read_csv(paths.selection_path(cfg))
    for method in ("multisubspace", "protonet"):  # each method's own choice, not mixed
        selection = table[(table["method"] == method) & table["best_s"]].iloc[0]
        s = selection["n_subspaces"]
        assert parent.data.tags[f"selection.{method}.w2_k1.S"] == str(s)
        for setting in ("lambda1", "lambda2", "tau"):
            tag = parent.data.tags[f"selection.{method}.w2_k1_S{s}.{setting}"]
            assert float(tag) == selection[setting]
        assert parent.data.tags[f"selection.{method}.w2_k1_S{s}.distance"] == \
            selection["distance"]


def test_every_parent_metric_is_its_main_table_cell(bench):
    """Each cell of main.csv (method, way, shot, evaluation shot; target = the data set) is
    one pair of parent metrics equal to it, and the parent has no other ``main/`` metric: the
    2-shot evaluation of the 1-shot models does not overwrite the 1-shot cell."""
    cfg = bench["cfg"]
    parent = bench["client"].get_run(bench["marker"]["parent_run_id"])
    logged = {k: v for k, v in parent.data.metrics.items() if k.startswith("main/")}
    main_table = pd.read_csv(paths.tables_dir(cfg) / "main.csv")
    assert set(main_table["eval_shot"]) == {1, 2}
    expected = {}
    for row in main_table.itertuples():
        key = f"main/tiny/{row.method}/w{row.way}_k{row.shot}_eval{row.eval_shot}"
        expected[f"{key}_acc_pct"] = row.mean
        expected[f"{key}_ci95_pct"] = row.ci95
    assert set(logged) == set(expected)
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value), name
    # and the history holds one value per metric: no cell was logged over another
    for name in logged:
        assert len(bench["client"].get_metric_history(parent.info.run_id, name)) == 1, name


def test_parent_metrics_are_keyed_by_a_target_column_where_the_table_has_one(bench):
    from subspace_fsl.benchmark_tracking import main_metrics

    table = pd.DataFrame({"method": ["a", "a"], "way": [5, 5], "shot": [1, 1],
                          "eval_shot": [1, 1], "target": ["cars", None],
                          "mean": [50.0, 60.0], "ci95": [1.0, 2.0]})
    metrics = main_metrics(bench["cfg"], table)
    assert metrics == {"main/cars/a/w5_k1_eval1_acc_pct": 50.0,
                       "main/cars/a/w5_k1_eval1_ci95_pct": 1.0,
                       "main/tiny/a/w5_k1_eval1_acc_pct": 60.0,
                       "main/tiny/a/w5_k1_eval1_ci95_pct": 2.0}


def test_the_chosen_runs_are_tagged_and_their_models_aliased(bench):
    cfg, client = bench["cfg"], bench["client"]
    table = pd.read_csv(paths.selection_path(cfg))
    best = table[table["best_s"].astype(bool)]
    for name, run in _children(bench).items():
        method, folder = name.split("/")
        key = paths.parse_run_name(folder)
        row = best[best["method"] == method].iloc[0]
        expected = bool(np.isclose(row["lambda2"], key.lambda2)
                        and row["n_subspaces"] == key.n_subspaces)
        tags = client.get_run(run.info.run_id).data.tags
        assert tags["chosen"] == str(expected).lower(), name
        # the settings that tell the runs apart (S, lambda1 and lambda2 vary in this grid)
        assert tags["cell"] == (f"S={key.n_subspaces} λ1={paths.format_number(key.lambda1)} "
                                f"λ2={paths.format_number(key.lambda2)}")
    for method in ("multisubspace", "protonet"):
        version = client.get_model_version_by_alias(f"tiny-{method}-w2_k1", "chosen")
        tags = client.get_run(version.run_id).data.tags
        assert tags["chosen"] == "true" and tags["method"] == method


def test_each_logged_model_is_named_and_carries_its_novel_metrics_and_data_set(bench):
    from subspace_fsl.mlflow_model import model_name

    client = bench["client"]
    models = {m.source_run_id: m for m in client.search_logged_models(
        [bench["experiment"].experiment_id])}
    for name, run in _children(bench).items():
        model = models[run.info.run_id]
        method, folder = name.split("/")
        assert model.name == model_name(method, folder) and method in model.name
        assert "." not in model.name and folder.split("_l1")[0] in model.name
        metrics = {m.key: m for m in model.metrics}
        assert metrics["novel_acc"].value == pytest.approx(run.data.metrics["novel_acc"])
        assert metrics["novel_shot2_acc"].value == pytest.approx(
            run.data.metrics["novel_shot2_acc"])
        assert metrics["val_eval_acc"].value == pytest.approx(run.data.metrics["val_eval_acc"])
        (dataset_input,) = run.inputs.dataset_inputs
        assert {(m.dataset_name, m.dataset_digest) for m in metrics.values()
                if not m.key.startswith("system/")} == {("tiny", dataset_input.dataset.digest)}


def test_the_best_checkpoint_is_an_mlflow_model_with_a_signature(bench):
    import mlflow.pyfunc

    from subspace_fsl.engine.evaluate import load_model
    from subspace_fsl.runtime import configure
    from subspace_fsl.tracking import global_store

    cfg = bench["cfg"]
    run = bench["runs"]["multisubspace/w2_k1_S2_l1-0.1_l2-0.1_anone_seed0"]
    models = bench["client"].search_logged_models([bench["experiment"].experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(
        r.info.run_id for r in _children(bench).values())
    (logged,) = [m for m in models if m.source_run_id == run.info.run_id]
    with global_store(tracking_uri(cfg)):
        model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    inputs = {spec.name: spec.shape for spec in model.metadata.get_input_schema().inputs}
    assert inputs == {"support_images": (-1, 3, 32, 32), "support_labels": (-1,),
                      "query_images": (-1, 3, 32, 32)}
    cache = ImageCache.open(paths.cache_dir(cfg))
    images = np.asarray(cache.images[:6])
    labels = np.array([0, 1], dtype=np.int64)
    logits = model.predict({"support_images": images[:2], "support_labels": labels,
                            "query_images": images[2:]})
    assert logits.shape == (4, 2)
    # the same numbers as the engine's own model on the same episode
    runtime = configure(load_config(None, ["runtime.device=cpu", "runtime.channels_last=false",
                                           "runtime.malloc_tuning=false"]))
    engine_model, _ = load_model(paths.run_dir(cfg, "multisubspace", run.info.run_name
                                               .split("/")[1]) / "best.pt", runtime)
    engine_model.eval()
    from subspace_fsl.data.episodes import EpisodeLoader

    batch = EpisodeLoader(cache, "cpu").load(np.arange(6))
    with torch.no_grad():
        expected = engine_model(batch[:2], torch.as_tensor(labels), batch[2:]).logits
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_predict_reads_a_model_uri(bench, tmp_path, capsys):
    from PIL import Image

    cfg = bench["cfg"]
    run = bench["runs"]["protonet/w2_k1_S1_l1-0_l2-0_anone_seed0"]
    source = paths.raw_root(cfg)
    classes = sorted(p for p in (source / "images").iterdir() if p.is_dir())[:2]
    for folder in classes:
        (tmp_path / "support" / folder.name).mkdir(parents=True)
        first = sorted(folder.iterdir())[0]
        Image.open(first).save(tmp_path / "support" / folder.name / first.name)
    query = sorted(classes[1].iterdir())[1]
    out = tmp_path / "pred.csv"
    code = main(["predict", "--config", str(bench["config"]), "--model",
                 f"runs:/{run.info.run_id}/model", "--support", str(tmp_path / "support"),
                 "--images", str(query), "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out)
    assert set(table["class"]) == {c.name for c in classes} and len(table) == 2
    by_checkpoint = tmp_path / "pred_ckpt.csv"
    best = paths.run_dir(cfg, "protonet", "w2_k1_S1_l1-0_l2-0_anone_seed0") / "best.pt"
    assert main(["predict", "--config", str(bench["config"]), "--checkpoint", str(best),
                 "--support", str(tmp_path / "support"), "--images", str(query),
                 "--out", str(by_checkpoint)]) == 0
    pd.testing.assert_frame_equal(table, pd.read_csv(by_checkpoint))
    capsys.readouterr()
    code = main(["predict", "--config", str(bench["config"]), "--model", "runs:/0123abc/model",
                 "--support", str(tmp_path / "support"), "--images", str(query)])
    err = capsys.readouterr().err
    assert code == 2 and "--model runs:/0123abc/model" in err and "Traceback" not in err


def test_children_hold_the_data_set_split_train_log_and_system_metrics(bench):
    client, cfg = bench["client"], bench["cfg"]
    stamp = ImageCache.open(paths.cache_dir(cfg)).stamp
    for name, run in _children(bench).items():
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "tiny"
        assert stamp.startswith(dataset_input.dataset.digest) and len(
            dataset_input.dataset.digest) == 32
        assert json.loads(dataset_input.dataset.profile)["stamp"] == stamp
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"train.log", "data", "eval", "best.pt"} <= top, name
        assert [a.path for a in client.list_artifacts(run.info.run_id, "data")] == [
            "data/tiny.json"]
        log_file = Path(client.download_artifacts(run.info.run_id, "train.log"))
        text = log_file.read_text()
        assert "episode 6: val acc" in text and f"MLflow run {run.info.run_id} ends" in text
        system = [k for k in run.data.metrics if k.startswith("system/")]
        assert "system/cpu_utilization_percentage" in system, name


def test_system_metrics_can_be_switched_off(bench, tmp_path):
    cfg = bench["cfg"]
    run = next(iter(grid.all_runs(cfg)))
    out = tmp_path / "no_sampler"
    settings = [f"--set={k}={json.dumps(v)}"
                for k, v in grid.run_settings(cfg, run.method, run.name).items()]
    assert main(["train", "--config", str(bench["config"]), *settings,
                 "--set", "tracking.system_metrics=false", "--out", str(out)]) == 0
    logged = bench["client"].get_run(recorded_run_id(out))
    assert not [k for k in logged.data.metrics if k.startswith("system/")]
    assert logged.data.metrics["best_val_acc"] >= 0


def test_a_restarted_run_folder_continues_its_own_run(bench, tmp_path):
    """The record file lost (a workflow manager cleaning up, a copied results folder): the
    store's ``run_dir`` tag still finds the run; reopened, it is RUNNING again."""
    cfg = bench["cfg"]
    folder = paths.run_dir(cfg, "protonet", "w2_k1_S1_l1-0_l2-0_anone_seed0")
    run_id = recorded_run_id(folder)
    saved = (folder / "mlflow_run.json").read_text()
    (folder / "mlflow_run.json").unlink()
    try:
        tracker = open_run(cfg, folder)
        assert tracker.run_id == run_id
        tracker.reopen()
        assert bench["client"].get_run(run_id).info.status == "RUNNING"
        tracker.finish("KILLED")
        again = bench["client"].get_run(run_id)
        assert again.info.status == "KILLED" and again.info.end_time is not None
        tracker.finish("FINISHED")
    finally:
        (folder / "mlflow_run.json").write_text(saved)
    names = [r.info.run_name for r in bench["client"].search_runs(
        [bench["experiment"].experiment_id],
        filter_string="attributes.run_name = 'protonet/w2_k1_S1_l1-0_l2-0_anone_seed0'")]
    assert names == ["protonet/w2_k1_S1_l1-0_l2-0_anone_seed0"]


def test_a_crashed_training_run_is_failed_with_an_end_time(bench, tmp_path):
    cfg = bench["cfg"]
    run = next(iter(grid.all_runs(cfg)))
    out = tmp_path / "nan"
    settings = [f"--set={k}={json.dumps(v)}"
                for k, v in grid.run_settings(cfg, run.method, run.name).items()]
    code = main(["train", "--config", str(bench["config"]), *settings, "--set", "train.lr=1.0e+30",
                 "--out", str(out)])
    assert code == 2
    failed = bench["client"].get_run(recorded_run_id(out))
    assert failed.info.status == "FAILED" and failed.info.end_time is not None
    assert "train.log" in {a.path for a in bench["client"].list_artifacts(failed.info.run_id)}


def test_the_experiment_describes_the_benchmark_and_presets_a_view(bench):
    tags = bench["experiment"].tags
    assert "Few-shot benchmark on `tiny`" in tags["mlflow.note.content"]
    assert tags["dataset"] == "tiny" and tags["split_rule"].startswith("class split random")
    assert "test episodes per cell" in tags["protocol"]
    assert json.loads(tags[SHARED_VIEW_TAG]) == view_state(bench["cfg"])
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert bench["marker"]["view"] == view_url(bench["experiment"].experiment_id)
    assert bench["marker"]["view"].endswith("&workflowType=machine_learning")
    columns = view_state(bench["cfg"])["selectedColumns"]
    # chosen, method, cell, then the sorted-by metric, before the settings
    assert columns[:4] == ["tags.`chosen`", "tags.`method`", "tags.`cell`",
                           "metrics.`novel_acc`"]
    for setting in ("model.n_subspaces", "train.lambda1", "train.lambda2"):  # they vary
        assert f"params.`{setting}`" in columns
    assert "params.`model.tau`" not in columns  # one tau in this grid


# --- in a real browser -----------------------------------------------------------------------


def chromium() -> str:
    """Debian's chromium, installed (apt-get) when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG_S)
        assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}"
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a store, on a free loopback port, for the length of a block."""

    def __init__(self, uri: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.uri = uri

    def __enter__(self) -> MlflowServer:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", self.uri, "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
        wait_for_http(f"{self.base}/health", self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def page_dom(browser: str, url: str, width: int = 3800) -> str:
    """The page's DOM after its scripts ran (``--dump-dom`` with a virtual-time budget)."""
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--window-size={width},1100", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def visible_text(dom: str) -> str:
    import html
    import re

    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.slow
def test_the_ui_shows_the_grid_the_chosen_runs_and_their_settings_in_chromium(bench):
    """At 1600 px (the runs table draws only the columns in view): the chosen column and
    its values, the cell settings that tell the runs apart, and the sort column."""
    browser = chromium()
    with MlflowServer(tracking_uri(bench["cfg"])) as server:
        text = visible_text(page_dom(
            browser, view_url(bench["experiment"].experiment_id, server.base), width=1600))
    assert "Few-shot benchmark on tiny" in text  # the experiment's description
    assert "Traces" not in text or "Models" in text  # the machine-learning mode's tabs
    client = bench["client"]
    for name, run in _children(bench).items():
        assert name[:20] in text
        tags = client.get_run(run.info.run_id).data.tags
        assert tags["cell"] in text, tags["cell"]  # S, lambda1, lambda2 of this row
        assert f"{run.data.metrics['novel_acc']:.4g}"[:4] in text
    assert "true" in text and "false" in text  # the chosen column's values
    for column in ("chosen", "cell", "novel_acc", "novel_ci95", "val_eval_acc", "method"):
        assert column in text, column
    assert "benchmark/tiny-" not in text  # the view lists the training runs


def test_init_tracking_reuses_the_parent_of_a_configuration_and_makes_one_per_grid(tmp_path):
    from subspace_fsl.benchmark_tracking import init_benchmark

    base = [f"results_dir={tmp_path / 'results'}", "dataset.name=birds"]
    cfg = load_config(None, base)
    first, again = init_benchmark(cfg), init_benchmark(cfg)
    assert first["parent_run_id"] == again["parent_run_id"]
    wider = init_benchmark(load_config(None, [*base, "grid.shot=[1, 5, 10]"]))
    assert wider["parent_run_id"] != first["parent_run_id"]
    client = MlflowClient(tracking_uri(cfg))
    parents = client.search_runs([first["experiment_id"]],
                                 "tags.`subspace_fsl.kind` = 'benchmark'")
    assert sorted(p.data.params["grid.shot"] for p in parents) == ["[1, 5, 10]", "[1, 5]"]
    assert all(p.info.status == "FINISHED" and p.info.end_time for p in parents)


def test_the_view_address_is_the_tracking_servers_own(tmp_path):
    """Against a tracking server the marker (and init-tracking's output) point at that
    server's UI, not at a local ``mlflow ui`` on port 5000."""
    from subspace_fsl.benchmark_tracking import LOCAL_UI, init_benchmark, ui_base

    assert ui_base(f"sqlite:///{tmp_path / 'mlflow.db'}") == LOCAL_UI
    assert ui_base("file:///tmp/mlruns") == LOCAL_UI
    with MlflowServer(f"sqlite:///{tmp_path / 'server.db'}") as server:
        cfg = load_config(None, [f"results_dir={tmp_path / 'results'}",
                                 f"tracking.uri={server.base}"])
        record = init_benchmark(cfg)
        assert record["view"] == view_url(record["experiment_id"], server.base)
        assert record["view"].startswith(f"{server.base}/#/experiments/")
        with urllib.request.urlopen(record["view"], timeout=HANG_S) as reply:  # the UI's page
            assert reply.status == 200 and b"<html" in reply.read().lower()
