"""End to end on tiny synthetic data: train -> evaluate -> predict through the command line,
with the outputs, the MLflow run and the configuration checks verified for real."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from tiny import EVERY_10, tiny_settings

from subspace_fsl.cli import main
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import ImageCache, prepare
from subspace_fsl.data.episodes import EpisodeLoader
from subspace_fsl.engine.checkpoint import load_checkpoint
from subspace_fsl.engine.data import open_data
from subspace_fsl.engine.evaluate import episode_accuracies, evaluation_plan, load_model
from subspace_fsl.engine.train import train
from subspace_fsl.runtime import configure, no_grad_eval
from subspace_fsl.tracking import recorded_run_id, tracking_uri

MAX_EPISODES, EVAL_EPISODES = 40, 30
VAL_EVERY, LOG_EVERY, VAL_EPISODES = (EVERY_10[k] for k in ("val_every", "log_every",
                                                            "val_episodes"))


def engine_settings(root: Path) -> dict:
    """tests/tiny.py's run at 40 episodes, validated every 10, evaluated on 30."""
    return tiny_settings(root, train={"max_episodes": MAX_EPISODES, **EVERY_10,
                                      "lr_step_episodes": 20},
                         eval={"episodes": EVAL_EPISODES})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    (root / "tiny.yaml").write_text(yaml.safe_dump(engine_settings(root)))
    prepare(load_config(root / "tiny.yaml"), progress=False)  # synthetic data + image cache
    return root


@pytest.fixture(autouse=True)
def _default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def trained(workspace: Path) -> Path:
    run = workspace / "runs" / "method"
    assert main(["train", "--config", str(workspace / "tiny.yaml"), "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def evaluated(trained: Path) -> Path:
    assert main(["evaluate", "--run", str(trained), "--split", "novel"]) == 0
    return trained / "eval" / "novel"


def test_training_writes_config_checkpoints_history_and_marker(workspace: Path, trained: Path):
    files = {p.name for p in trained.iterdir()}
    assert {"config.yaml", "checkpoint.pt", "best.pt", "history.csv", "train_summary.json",
            "done", "mlflow_run.json"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    assert load_config(trained / "config.yaml") == load_config(workspace / "tiny.yaml")

    history = pd.read_csv(trained / "history.csv")
    assert list(history.columns) == ["episode", "train_loss", "train_acc", "l1", "l2",
                                     "val_acc", "val_ci95", "lr"]
    assert history["episode"].tolist() == list(range(LOG_EVERY, MAX_EPISODES + 1, LOG_EVERY))
    checks = history.dropna(subset=["val_acc"])
    assert checks["episode"].tolist() == list(range(VAL_EVERY, MAX_EPISODES + 1, VAL_EVERY))
    assert history[["train_loss", "train_acc", "l1", "l2"]].notna().all().all()
    assert ((history["l1"] >= 0) & (history["l1"] <= 1)).all()  # RV form of L1 lies in [0, 1]
    # step schedule: lr halves after lr_step_episodes (the lr used by each row's last episode)
    assert history.set_index("episode")["lr"].to_dict()[20] == pytest.approx(1e-3)
    assert history.set_index("episode")["lr"].to_dict()[25] == pytest.approx(5e-4)

    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["episodes"] == MAX_EPISODES and summary["stopped"] == "max_episodes"
    assert summary["best_val_acc"] == checks["val_acc"].max()
    best = load_checkpoint(trained / "best.pt")
    assert best["episode"] == summary["best_episode"]
    assert best["val_acc"] == summary["best_val_acc"]
    assert best["config"]["model"]["head"] == "multisubspace"


def test_evaluation_writes_episode_table_and_summary(workspace: Path, trained: Path,
                                                     evaluated: Path):
    table = pd.read_csv(evaluated / "episodes.csv")
    assert list(table.columns) == ["episode", "seed", "accuracy"]
    assert table["episode"].tolist() == list(range(EVAL_EPISODES))
    assert (table["seed"] == 2024).all()
    summary = json.loads((evaluated / "summary.json").read_text())
    accuracies = table["accuracy"].to_numpy()
    assert summary["mean"] == pytest.approx(accuracies.mean())
    # the sample std (ddof = 1), as in the tables (stats.mean_ci): one interval everywhere
    assert summary["std"] == pytest.approx(accuracies.std(ddof=1))
    assert summary["ci95"] == pytest.approx(
        1.96 * accuracies.std(ddof=1) / math.sqrt(EVAL_EPISODES))
    assert {k: summary[k] for k in ("episodes", "way", "shot", "query", "split", "split_rule")} \
        == {"episodes": EVAL_EPISODES, "way": 2, "shot": 2, "query": 3, "split": "novel",
            "split_rule": "random"}
    assert (evaluated / "config.yaml").is_file()


def test_a_model_evaluated_at_two_shots_writes_two_labelled_evaluations(
        workspace: Path, trained: Path, evaluated: Path):
    # trained at 2 shots; --shot 1 writes eval/novel_shot1 beside the training shot's eval/novel
    assert main(["evaluate", "--run", str(trained), "--split", "novel", "--shot", "1"]) == 0
    other = trained / "eval" / "novel_shot1"
    one, two = (json.loads((d / "summary.json").read_text()) for d in (other, evaluated))
    assert (one["shot"], one["train_shot"], two["shot"], two["train_shot"]) == (1, 2, 2, 2)
    assert one["provenance"]["eval.shot"] == 1 and two["provenance"]["eval.shot"] == 2
    # the episodes are the eval.seed plans of 1 and of 2 shots, built here from the labels
    from subspace_fsl.data.episodes import episode_plan
    from subspace_fsl.tracking import episodes_digest

    cfg = load_config(trained / "config.yaml")
    data = open_data(cfg)
    classes = data.split_classes("novel")
    plans = {k: episode_plan(data.labels, classes, 2, k, 3, EVAL_EPISODES, 2024) for k in (1, 2)}
    assert {len(e.support_idx) for e in plans[1]} == {2}  # 2-way 1-shot
    assert one["episodes_digest"] == episodes_digest(plans[1])
    assert two["episodes_digest"] == episodes_digest(plans[2])
    assert one["episodes_digest"] != two["episodes_digest"]
    model, _ = load_model(trained / "best.pt", configure(cfg))
    accuracies = pd.read_csv(other / "episodes.csv")["accuracy"].to_numpy()
    expected = episode_accuracies(model, data, plans[1], 32, configure(cfg))
    np.testing.assert_allclose(accuracies, expected)
    # its own MLflow names: the training shot's novel_acc stays that evaluation's
    client = MlflowClient(tracking_uri(load_config(trained / "config.yaml")))
    run = client.get_run(recorded_run_id(trained))
    assert run.data.metrics["novel_shot1_acc"] == pytest.approx(one["mean"])
    assert run.data.metrics["novel_acc"] == pytest.approx(two["mean"])


def test_validation_during_training_is_the_evaluation_code_path(trained: Path, tmp_path: Path):
    # the best checkpoint's recorded validation accuracy is reproduced by `evaluate --split val`
    out = tmp_path / "val"
    assert main(["evaluate", "--run", str(trained), "--split", "val", "--out", str(out),
                 "--set", f"eval.episodes={VAL_EPISODES}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    best = json.loads((trained / "train_summary.json").read_text())["best_val_acc"]
    assert summary["mean"] == pytest.approx(best, abs=1e-6)
    assert summary["split"] == "val"


def test_cached_features_give_the_accuracies_of_re_embedding_every_episode(workspace: Path,
                                                                           trained: Path):
    cfg = load_config(trained / "config.yaml")
    runtime = configure(cfg)
    model, _ = load_model(trained / "best.pt", runtime)
    data = open_data(cfg)
    plan = evaluation_plan(cfg, data, "novel", episodes=6)
    cached = episode_accuracies(model, data, plan, batch_size=7, runtime=runtime)
    loader = EpisodeLoader(data.cache, runtime.device)
    direct = []
    with no_grad_eval(model):
        for episode in plan:
            support, query = loader(episode)
            support_labels, query_labels = loader.labels(episode)
            logits = model(support, support_labels, query).logits
            direct.append((logits.argmax(1) == query_labels).float().mean().item())
    np.testing.assert_allclose(cached, direct)


def test_mlflow_holds_params_metrics_tags_and_artifacts(workspace: Path, trained: Path,
                                                        evaluated: Path):
    cfg = load_config(trained / "config.yaml")
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(recorded_run_id(trained))
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    params = run.data.params
    assert params["train.way"] == "2" and params["model.head"] == "multisubspace"
    assert params["split.counts"] == "[4, 2, 2]" and run.data.tags["runtime.device"] == "cpu"
    steps = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
             for key in ("train_loss", "train_acc", "l1", "l2", "val_acc", "episodes_per_s",
                         "novel_acc", "novel_ci95")}
    assert steps["train_loss"] == list(range(LOG_EVERY, MAX_EPISODES + 1, LOG_EVERY))
    assert steps["val_acc"] == list(range(VAL_EVERY, MAX_EPISODES + 1, VAL_EVERY))
    assert len(steps["novel_acc"]) == len(steps["novel_ci95"]) == 1
    novel = json.loads((evaluated / "summary.json").read_text())
    assert run.data.metrics["novel_acc"] == pytest.approx(novel["mean"])
    tags = run.data.tags
    assert tags["data_stamp"] == ImageCache.open(workspace / "results/cache/tiny").stamp
    assert tags["device"] == "cpu" and tags["subspace_fsl.version"]
    assert len(tags["mlflow.source.git.commit"]) == 40
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "best.pt", "history.csv", "train_summary.json", "eval"} <= top
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "eval/novel")}
    assert evaluation == {"eval/novel/summary.json", "eval/novel/episodes.csv",
                          "eval/novel/config.yaml"}


def test_predict_prints_and_writes_distances_and_subspace_shares(workspace: Path, trained: Path,
                                                                 tmp_path: Path, capsys):
    cfg = load_config(trained / "config.yaml")
    data = open_data(cfg)
    index = data.cache.index
    raw = Path(data.cache.meta["data_root"])
    support, queries = tmp_path / "support", tmp_path / "queries"
    queries.mkdir()
    expected = {}
    for name in data.split["novel"]:
        files = [raw / p for p in index.loc[index["class_name"] == name, "path"]]
        (support / name).mkdir(parents=True)
        for f in files[:2]:
            shutil.copy(f, support / name / f.name)
        for f in files[2:5]:
            shutil.copy(f, queries / f.name)
            expected[str(queries / f.name)] = name
    out = tmp_path / "preds.csv"
    code = main(["predict", "--checkpoint", str(trained / "best.pt"), "--support", str(support),
                 "--images", str(queries), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "predicted", "class", "rank", "distance",
                                   "share_s1", "share_s2"]
    assert len(table) == len(expected) * 2 and len(printed) == len(expected)
    assert set(table["image"]) == set(expected)
    for image, rows in table.groupby("image"):
        assert rows["rank"].tolist() == [1, 2]
        assert rows["distance"].is_monotonic_increasing
        assert (rows["predicted"] == rows["class"].iloc[0]).all()
        np.testing.assert_allclose(rows[["share_s1", "share_s2"]].sum(axis=1), 1.0, rtol=1e-5)
        assert any(line.startswith(f"{image}: {rows['predicted'].iloc[0]} ") for line in printed)
    assert (tmp_path / "preds.config.yaml").is_file()
    # the decision really is the nearest class: a trained model beats chance on these images
    accuracy = np.mean([rows["predicted"].iloc[0] == expected[image]
                        for image, rows in table.groupby("image")])
    assert accuracy >= 0.5


def test_predict_explain_writes_one_evidence_figure_per_image(trained: Path, tmp_path: Path):
    from PIL import Image

    cfg = load_config(trained / "config.yaml")
    data = open_data(cfg)
    index, raw = data.cache.index, Path(data.cache.meta["data_root"])
    support, queries = tmp_path / "support", tmp_path / "queries"
    queries.mkdir()
    for name in data.split["novel"]:
        files = [raw / p for p in index.loc[index["class_name"] == name, "path"]]
        (support / name).mkdir(parents=True)
        for f in files[:2]:
            shutil.copy(f, support / name / f.name)
        shutil.copy(files[2], queries / files[2].name)
    figures = tmp_path / "figures"
    code = main(["predict", "--checkpoint", str(trained / "best.pt"), "--support", str(support),
                 "--images", str(queries), "--out", str(tmp_path / "p.csv"),
                 "--explain", str(figures)])
    assert code == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert {"share_s1", "share_s2"} <= set(table.columns)  # the shares, as without --explain
    written = sorted(figures.glob("*.png"))
    stems = sorted(p.stem for p in queries.iterdir())
    assert [p.name.split("_", 1)[1] for p in written] == [f"{s}.png" for s in stems]
    for path in written:
        with Image.open(path) as image:
            # the image and one map per subspace side by side: much wider than tall
            assert image.width > 2.5 * image.height and image.height > 100


def test_a_finished_run_started_again_does_nothing(workspace: Path, trained: Path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir() if p.is_file()}
    assert main(["train", "--config", str(workspace / "tiny.yaml"), "--out", str(trained)]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == MAX_EPISODES
    after = {p.name: p.stat().st_mtime_ns for p in trained.iterdir() if p.is_file()}
    assert after == before


def test_a_run_directory_refuses_other_settings(workspace: Path, trained: Path, capsys):
    code = main(["train", "--config", str(workspace / "tiny.yaml"), "--out", str(trained),
                 "--set", "train.lr=0.01"])
    assert code == 2
    assert "train.lr: 0.001 -> 0.01" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ("model.backbone=nope", "model.backbone='nope'"),
    ("model.head=nope", "model.head='nope'"),
    ("train.way=7", "train.way=7 but the base split has 4 classes"),
    ("train.way=3", "train.way=3 but the val split has 2 classes"),
    ("train.query=11", "train.shot=2 + train.query=11 = 13 but the smallest base class has 12"),
    ("eval.query=11", "train.shot=2 + eval.query=11 = 13 but the smallest val class has 12"),
    ("model.subspace_dim=2", "train.shot=2 does not fit model.head='multisubspace', "
                             "model.n_subspaces=2, model.subspace_dim=2: subspace_dim"),
    ("tracking.uri=file:///tmp/mlruns", "tracking.uri='file:///tmp/mlruns'"),
    ("runtime.device=cuda:7", "runtime.device='cuda:7'"),
    ("train.lr=-1", "train.lr"),
])
def test_bad_configurations_fail_before_training(workspace: Path, tmp_path: Path, capsys,
                                                 override: str, message: str):
    run = tmp_path / "run"
    code = main(["train", "--config", str(workspace / "tiny.yaml"), "--out", str(run),
                 "--set", override])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_sgd_cosine_and_early_stopping(workspace: Path, tmp_path: Path):
    cfg = load_config(workspace / "tiny.yaml", [
        "train.optimizer=sgd", "train.lr_schedule=cosine", "train.lr=0.01", "train.patience=1",
        "train.val_every=2", "train.log_every=2", "train.max_episodes=30",
        "tracking.enabled=false"])
    summary = train(cfg, tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    val = history.dropna(subset=["val_acc"])["val_acc"].tolist()
    # patience 1: stop at the first check that does not beat the best so far
    first_miss = next(i for i in range(1, len(val)) if val[i] <= max(val[:i]))
    assert summary["stopped"] == "early_stopping"
    assert summary["episodes"] == 2 * (first_miss + 1) < 30
    # cosine over max_episodes; the row of episode 2 shows the lr its last step used
    assert history["lr"].iloc[0] == pytest.approx(0.01 * (1 + math.cos(math.pi / 30)) / 2)
    assert history["lr"].is_monotonic_decreasing
    assert not (tmp_path / "run" / "mlflow_run.json").exists()
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["episode"] \
        == summary["best_episode"]
