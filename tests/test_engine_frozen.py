"""The frozen-embedding protocol (train.backbone: frozen): the feature table equals the
backbone on every cached image (and its mirror), a frozen run trains only the head, its
accuracies are the head's on those stored features, and a stale table is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from subspace_fsl import frozen_protocol, paths
from subspace_fsl.backbones import build_backbone
from subspace_fsl.config import validate
from subspace_fsl.data.cache import ImageCache, prepare
from subspace_fsl.data.episodes import IMAGENET_MEAN, IMAGENET_STD, episode_plan
from subspace_fsl.engine import features as ft
from subspace_fsl.engine.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from subspace_fsl.engine.evaluate import evaluate
from subspace_fsl.engine.model import build_model
from subspace_fsl.engine.pretrain import pretrain
from subspace_fsl.engine.train import train
from subspace_fsl.heads import build_head
from subspace_fsl.provenance import ProvenanceError


def _cfg(root: Path, **train: object) -> dict:
    settings = {
        "results_dir": str(root / "results"),
        "data_dir": str(root / "data"),
        "dataset": {"name": "tiny", "image_size": 32,
                    "synthetic": {"classes": 9, "images_per_class": 8, "size": 32}},
        "split": {"counts": [3, 3, 3]},
        "model": {"backbone": "conv4", "head": "multisubspace", "n_subspaces": 2,
                  "subspace_dim": 4},
        "train": {"way": 3, "shot": 1, "query": 2, "max_episodes": 6, "val_every": 3,
                  "val_episodes": 4, "patience": 10, "checkpoint_every": 3, "log_every": 3,
                  "lr_schedule": "none", "augment": "flip", "init": "pretrained",
                  "backbone": "frozen", "lambda1": 0.1, "lambda2": 0.1, **train},
        "pretrain": {"max_steps": 2, "batch_size": 8, "val_every": 2, "val_episodes": 2,
                     "val_way": 3, "val_shot": 1, "augment": "none"},
        "eval": {"query": 2, "batch_size": 16, "episodes": 5},
        "tracking": {"enabled": False},
        "runtime": {"threads": 1, "progress": "none", "device": "cpu"},
    }
    return validate(settings)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cache, a pre-trained backbone and its feature table (with mirrors)."""
    base = tmp_path_factory.mktemp("frozen")
    cfg = _cfg(base)
    prepare(cfg)
    pretrain(cfg, paths.pretrain_dir(cfg))
    ft.build_features(cfg)
    return base


def _normalised(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(images)).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _backbone(cfg: dict) -> torch.nn.Module:
    net = build_backbone("conv4")
    net.load_state_dict(load_checkpoint(paths.pretrained_backbone(cfg))["backbone"])
    return net.eval()


def test_rows_are_the_backbone_on_each_image_and_on_its_mirror(root: Path):
    from torchvision.transforms.functional import hflip

    cfg = _cfg(root)
    table = ft.open_features(cfg)
    cache = ImageCache.open(paths.cache_dir(cfg))
    assert table.features.shape == (len(cache.labels), table.dim)
    assert np.array_equal(table.labels, cache.labels)
    net = _backbone(cfg)
    with torch.no_grad():  # one image at a time: independent of the builder's batches
        for i in (0, 5, len(cache.labels) - 1):
            image = _normalised(cache.images[i : i + 1])
            torch.testing.assert_close(table.features[i], net(image)[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(table.flipped[i], net(hflip(image))[0], atol=1e-5,
                                       rtol=1e-5)
    # an episode: flip_mask picks mirrored rows, mirror_support appends the other orientation
    support, query = table.episode([0, 1], [2], torch.tensor([True, False, True]),
                                   mirror_support=True)
    assert torch.equal(support, torch.stack([table.flipped[0], table.features[1],
                                             table.features[0], table.flipped[1]]))
    assert torch.equal(query, table.flipped[2:3])


def test_a_frozen_run_trains_only_the_head_and_scores_as_its_features_say(root: Path):
    cfg = _cfg(root)
    out = root / "run"
    summary = train(cfg, out)
    assert summary["episodes"] == 6 and summary["validation_checks"] == 2
    best = load_checkpoint(out / "best.pt")
    pretrained = load_checkpoint(paths.pretrained_backbone(cfg))["backbone"]
    table = ft.load_features(paths.features_path(cfg))
    assert best["features_stamp"] == table.stamp
    for key, value in pretrained.items():  # the backbone is the pre-trained one, bit for bit
        assert torch.equal(best["model"][f"backbone.{key}"], value), key
    # every head parameter moved from the run's seeded initial head (same seed, same build)
    seed_everything(cfg["train"]["seed"])
    initial = build_model(cfg).head
    final = load_checkpoint(out / "checkpoint.pt")["model"]
    names = [name for name, _ in initial.named_parameters()]
    assert names and all(not torch.equal(final[f"head.{n}"], initial.state_dict()[n])
                         for n in names)
    trained = {k[len("head."):]: v for k, v in best["model"].items() if k.startswith("head.")}

    # the novel accuracies: the trained head on the stored rows, computed here directly
    result = evaluate(cfg, out / "best.pt", "novel", out / "eval" / "novel")
    assert result["protocol"] == "frozen"
    head = build_head("multisubspace", table.dim, n_subspaces=2, subspace_dim=4)
    head.load_state_dict(trained)
    head.eval()
    classes = [table.class_names.index(n) for n in yaml.safe_load(
        paths.split_path(cfg).read_text())["novel"]]
    plan = episode_plan(table.labels, classes, 3, 1, 2, 5, cfg["eval"]["seed"])
    with torch.no_grad():
        direct = [
            (head(table.features[e.support_idx], torch.as_tensor(e.support_labels),
                  table.features[e.query_idx]).logits.argmax(1)
             == torch.as_tensor(e.query_labels)).double().mean().item()
            for e in plan
        ]
    assert result["mean"] == pytest.approx(float(np.mean(direct)), abs=1e-12)


def test_a_fixed_tau_protonet_has_nothing_to_train_and_still_finishes(root: Path):
    cfg = _cfg(root, lambda1=0.0, lambda2=0.0, augment="none")
    cfg["model"].update(head="protonet", n_subspaces=1)
    out = root / "protonet"
    summary = train(cfg, out)
    assert summary["episodes"] == 6 and (out / "done").is_file()
    assert (out / "history.csv").read_text().count("\n") == 3  # header + 2 rows


def test_frozen_settings_are_refused_with_the_setting_named(root: Path):
    with pytest.raises(ValueError, match=r"train\.init=pretrained"):
        frozen_protocol.check_frozen_settings(_cfg(root, init="scratch"))
    with pytest.raises(ValueError, match=r"train\.augment=standard"):
        frozen_protocol.check_frozen_settings(_cfg(root, augment="standard"))


def test_a_changed_backbone_makes_the_table_stale_and_embed_rebuilds_it(tmp_path: Path,
                                                                        root: Path):
    import shutil

    cfg = _cfg(tmp_path)
    shutil.copytree(root / "results" / "cache", tmp_path / "results" / "cache")
    shutil.copytree(root / "results" / "pretrain", tmp_path / "results" / "pretrain")
    shutil.copytree(root / "results" / "splits", tmp_path / "results" / "splits")
    first = ft.build_features(cfg)
    run = tmp_path / "run"
    train(cfg, run)
    weights = paths.pretrained_backbone(cfg)
    state = load_checkpoint(weights)
    state["backbone"] = {k: v + 0.01 if v.is_floating_point() else v
                         for k, v in state["backbone"].items()}
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, weights)
    with pytest.raises(ProvenanceError, match=r"backbone\.sha256"):
        ft.open_features(cfg)
    # the CLI readers: exit 2, one line naming the setting
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "subspace_fsl.cli", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]

    for command in (("train", "-c", str(config), "--out", str(run)),
                    ("evaluate", "--run", str(run))):
        assert "backbone.sha256" in cli(*command)
    second = ft.build_features(cfg)
    assert second.stamp != first.stamp
    assert not torch.equal(second.features, first.features)
    ft.open_features(cfg)  # current again
    # the run trained on the old table is neither resumed nor evaluated on the new one
    assert "trained on features" in cli("evaluate", "--run", str(run))
    assert "trained on features" in cli("train", "-c", str(config), "--out", str(run))
