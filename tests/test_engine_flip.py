"""DSN as published: ``model.flip_support`` doubles the 1-shot support by horizontal flips, in
training, evaluation and predict, checked against torchvision's hflip and a closed-form
1-direction subspace distance."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
import yaml
from PIL import Image

from subspace_fsl.cli import main
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import prepare
from subspace_fsl.engine.data import open_data
from subspace_fsl.engine.evaluate import episode_accuracies, evaluation_plan, load_model
from subspace_fsl.engine.model import build_model, check_head_episode
from subspace_fsl.engine.predict import load_files, predict
from subspace_fsl.engine.train import EpisodeTrainer
from subspace_fsl.heads import ProtoNetHead
from subspace_fsl.runtime import configure, no_grad_eval

WAY = 3


def settings(root: Path, flip: str = "one_shot") -> dict:
    """8 classes x 10 images at 32 px; 3-way 1-shot DSN on conv4."""
    return {
        "results_dir": str(root / "results"),
        "data_dir": str(root / "data"),
        "dataset": {"name": "tiny", "image_size": 32,
                    "synthetic": {"classes": 9, "images_per_class": 10, "size": 32}},
        "split": {"counts": [3, 3, 3]},
        "model": {"backbone": "conv4", "head": "dsn", "n_subspaces": 1, "flip_support": flip},
        "train": {"way": WAY, "shot": 1, "query": 2, "max_episodes": 6, "val_every": 3,
                  "val_episodes": 3, "log_every": 3, "checkpoint_every": 3, "patience": 100,
                  "lambda1": 0, "lambda2": 0.03, "augment": "none"},
        "eval": {"query": 2, "episodes": 4, "batch_size": 5},
        "runtime": {"threads": 1, "progress": "none", "device": "cpu"},
        "tracking": {"enabled": False},
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flip")
    for flip in ("one_shot", "never"):
        (root / f"{flip}.yaml").write_text(yaml.safe_dump(settings(root, flip)))
    prepare(load_config(root / "one_shot.yaml"), progress=False)
    return root


def head_inputs(model: torch.nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """Record what the head is called with (a forward pre-hook; the head still runs)."""
    calls: list[tuple[torch.Tensor, ...]] = []
    model.head.register_forward_pre_hook(lambda _m, args: calls.append(
        tuple(a.detach().clone() for a in args)))
    return calls


def test_evaluation_gives_the_head_each_support_image_and_its_mirror(workspace: Path):
    cfg = load_config(workspace / "one_shot.yaml")
    torch.manual_seed(0)
    model, runtime, data = build_model(cfg), configure(cfg), open_data(cfg)
    plan = evaluation_plan(cfg, data, "novel", episodes=3)
    calls = head_inputs(model)
    episode_accuracies(model, data, plan, batch_size=4, runtime=runtime)
    assert len(calls) == len(plan)
    model.eval()
    for episode, (support, labels, query) in zip(plan, calls, strict=True):
        assert support.shape[0] == 2 * WAY  # 2 support features per class in 1-shot
        np.testing.assert_array_equal(labels.numpy(), np.tile(episode.support_labels, 2))
        images = data.images_to_tensor(episode.support_idx, runtime.device)
        with torch.no_grad():
            plain = model.backbone(images)
            flipped = model.backbone(TF.hflip(images))  # torchvision's flip, not ours
        torch.testing.assert_close(support[:WAY], plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(support[WAY:], flipped, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(support[:WAY], support[WAY:])
        assert query.shape[0] == WAY * cfg["eval"]["query"]


def test_flip_never_keeps_one_feature_per_class_and_five_shot_is_not_flipped(workspace: Path):
    cfg = load_config(workspace / "never.yaml")
    model, runtime, data = build_model(cfg), configure(cfg), open_data(cfg)
    calls = head_inputs(model)
    episode_accuracies(model, data, evaluation_plan(cfg, data, "novel", episodes=2), 4, runtime)
    assert [c[0].shape[0] for c in calls] == [WAY, WAY]
    flipping = build_model(load_config(workspace / "one_shot.yaml"))
    assert (flipping.support_shot(1), flipping.support_shot(5)) == (2, 5)


def test_one_shot_dsn_with_the_flip_differs_from_protonet_by_the_flip_direction(
        workspace: Path):
    cfg = load_config(workspace / "one_shot.yaml")
    torch.manual_seed(1)
    model, runtime, data = build_model(cfg), configure(cfg), open_data(cfg)
    plan = evaluation_plan(cfg, data, "novel", episodes=1)
    calls = head_inputs(model)
    episode_accuracies(model, data, plan, batch_size=8, runtime=runtime)
    support, labels, query = (t.double() if t.is_floating_point() else t for t in calls[0])
    with no_grad_eval(model):
        dsn = model.head(support, labels, query).distances
        protonet = ProtoNetHead(support.shape[1])(support, labels, query).distances
        # without the flip, 1-shot DSN is ProtoNet's distance to the one support feature
        alone = model.head(support[:WAY], labels[:WAY], query).distances
        assert torch.allclose(alone, ProtoNetHead(support.shape[1])(
            support[:WAY], labels[:WAY], query).distances)
    # independent closed form: r = q - (x + x') / 2, u = (x - x') / ||x - x'||,
    # D = ||r||^2 - (r . u)^2 (the residual off the line through x and its mirror x')
    x, x_mirror = support[:WAY].numpy(), support[WAY:].numpy()
    mean = (x + x_mirror) / 2
    u = (x - x_mirror) / np.linalg.norm(x - x_mirror, axis=1, keepdims=True)
    r = query.numpy()[:, None, :] - mean[None]
    expected = (r**2).sum(-1) - ((r * u[None]).sum(-1)) ** 2
    np.testing.assert_allclose(dsn.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert (protonet - dsn).min() > 0  # the flip direction is projected out


def test_training_steps_give_the_model_the_support_plus_its_mirror_images(workspace: Path):
    cfg = load_config(workspace / "one_shot.yaml")
    torch.manual_seed(0)
    data, runtime = open_data(cfg), configure(cfg)
    trainer = EpisodeTrainer(cfg, data, build_model(cfg), runtime)
    calls: list[tuple[torch.Tensor, ...]] = []
    trainer.step_model.register_forward_pre_hook(
        lambda _m, args: calls.append(tuple(a.detach().clone() for a in args)))
    trainer.step()
    support, labels, _query = calls[0]
    assert support.shape[0] == 2 * WAY
    torch.testing.assert_close(support[WAY:], TF.hflip(support[:WAY]))
    torch.testing.assert_close(labels[WAY:], labels[:WAY])


def test_a_head_too_small_for_the_doubled_support_is_named(workspace: Path):
    cfg = load_config(workspace / "one_shot.yaml", [
        "model.head=multisubspace", "model.subspace_dim=2", "model.n_subspaces=1"])
    with pytest.raises(ValueError, match=r"x2 with model.flip_support='one_shot'.*"
                                         r"subspace_dim \(2\) must exceed shot \(2\)"):
        check_head_episode(build_model(cfg), WAY, 1, "train.shot=1", cfg["model"])


def test_train_evaluate_and_predict_end_to_end_with_the_flip(workspace: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", "--config", str(workspace / "one_shot.yaml"), "--out", str(run)]) == 0
    assert main(["evaluate", "--run", str(run), "--split", "novel"]) == 0
    summary = json.loads((run / "eval" / "novel" / "summary.json").read_text())
    assert summary["episodes"] == 4 and 0 <= summary["mean"] <= 1
    assert load_config(run / "config.yaml")["model"]["flip_support"] == "one_shot"

    # predict: a support folder of one image per class; the distances are the head's on
    # [features, features of torchvision's flip] computed here
    cfg = load_config(run / "config.yaml")
    images = sorted((Path(cfg["data_dir"]) / "tiny" / "images").rglob("*.jpg"))
    by_class: dict[str, list[Path]] = {}
    for path in images:
        by_class.setdefault(path.parent.name, []).append(path)
    support_dir = tmp_path / "support"
    chosen = sorted(by_class)[:WAY]
    for name in chosen:
        (support_dir / name).mkdir(parents=True)
        Image.open(by_class[name][0]).save(support_dir / name / "a.png")
    queries = [by_class[name][1] for name in chosen]
    table = predict(run / "best.pt", support_dir, queries, cfg)
    runtime = configure(cfg)
    model, _ = load_model(run / "best.pt", runtime)
    support_paths = [support_dir / name / "a.png" for name in chosen]
    _, support_images = load_files(support_paths, cfg["dataset"], runtime)
    _, query_images = load_files(queries, cfg["dataset"], runtime)
    with no_grad_eval(model):
        features = model.backbone(torch.cat([support_images, TF.hflip(support_images)]))
        expected = model.head(features, torch.arange(WAY).repeat(2),
                              model.backbone(query_images)).distances
    got = table.pivot(index="image", columns="class", values="distance")
    got = got.loc[[str(q) for q in queries], chosen].to_numpy()
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_the_full_benchmark_runs_dsn_as_published_and_otherwise_the_default_baselines():
    from subspace_fsl import grid
    from subspace_fsl.config import load_schema

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml")
    default = load_schema()["properties"]["grid"]["properties"]["baselines"]["default"]
    ours = copy.deepcopy(cfg["grid"]["baselines"])
    assert ours["dsn"].pop("flip_support") == "one_shot"
    assert ours == default  # no silent drift from the schema's baselines
    run = next(r for r in grid.baseline_runs(cfg) if r.method == "dsn")
    assert grid.run_config(cfg, "dsn", run.name)["model"]["flip_support"] == "one_shot"
    method_run = grid.method_runs(cfg)[0]
    assert grid.run_config(cfg, method_run.method, method_run.name)["model"][
        "flip_support"] == "never"
