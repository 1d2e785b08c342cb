"""The pretrain stage: batch classification on the base classes, validated the few-shot way,
resumable exactly, refused when its settings changed, re-finished when an output is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from subspace_fsl.config import validate
from subspace_fsl.data.cache import prepare
from subspace_fsl.engine import pretrain as pt
from subspace_fsl.engine.checkpoint import load_checkpoint
from subspace_fsl.engine.data import open_data


def _cfg(root: Path, **pretrain: object) -> dict:
    settings = {
        "results_dir": str(root / "results"),
        "data_dir": str(root / "data"),
        "dataset": {"name": "tiny", "image_size": 32,
                    "synthetic": {"classes": 8, "images_per_class": 12, "size": 32}},
        "split": {"counts": [4, 2, 2]},
        "model": {"backbone": "conv4"},
        "pretrain": {"max_steps": 6, "batch_size": 8, "val_every": 2, "val_episodes": 3,
                     "val_way": 2, "val_shot": 2, "patience": 100, "augment": "flip",
                     **pretrain},
        "eval": {"query": 3, "batch_size": 32},
        "tracking": {"enabled": False},
        "runtime": {"threads": 1, "progress": "none", "device": "cpu"},
    }
    return validate(settings)


@pytest.fixture
def cfg(tmp_path: Path) -> dict:
    config = _cfg(tmp_path)
    prepare(config)
    return config


def test_pretraining_writes_its_outputs_and_the_weights_it_validated(cfg: dict, tmp_path: Path):
    out = tmp_path / "pre"
    summary = pt.pretrain(cfg, out)
    assert summary["steps"] == 6 and summary["stopped"] == "max_steps"
    assert summary["validation_checks"] == 3
    for name in ("config.yaml", "checkpoint.pt", "backbone.pt", "history.csv", "done",
                 "pretrain_summary.json"):
        assert (out / name).is_file(), name
    saved = load_checkpoint(out / "backbone.pt")
    assert saved["step"] == summary["best_step"] and saved["val_acc"] == summary["best_val_acc"]
    # the stored weights give exactly the validation accuracy recorded for them
    run = pt.Pretraining(cfg, out, open_data(cfg))
    run.backbone.load_state_dict(saved["backbone"])
    assert run.validate() == pytest.approx(summary["best_val_acc"], abs=1e-12)
    # a finished run is a no-op
    assert pt.pretrain(cfg, out) == summary


def test_an_interrupted_pretraining_resumes_to_the_same_weights(cfg: dict, tmp_path: Path):
    whole = tmp_path / "whole"
    pt.pretrain(cfg, whole)
    part = tmp_path / "part"
    part.mkdir()
    first = pt.Pretraining(cfg, part, open_data(cfg))
    for _ in range(2):
        first.step()
    first.validate()
    first.checkpoint()
    for _ in range(3):  # steps after the last checkpoint are lost, as after a SIGKILL
        first.step()
    del first
    pt.pretrain(cfg, part)  # resumes from step 2
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert a["history"] == b["history"]
    for key, value in a["backbone"].items():
        assert torch.equal(value, b["backbone"][key]), key


def test_a_lost_backbone_file_is_rewritten_from_the_checkpoint(cfg: dict, tmp_path: Path):
    out = tmp_path / "pre"
    pt.pretrain(cfg, out)
    before = load_checkpoint(out / "backbone.pt")
    (out / "backbone.pt").unlink()
    pt.pretrain(cfg, out)
    after = load_checkpoint(out / "backbone.pt")
    assert after["step"] == before["step"]
    for key, value in before["backbone"].items():
        assert torch.equal(value, after["backbone"][key]), key


def test_weights_from_other_settings_are_refused_naming_the_setting(cfg: dict, tmp_path: Path):
    from subspace_fsl.backbones import build_backbone

    out = tmp_path / "pre"
    pt.pretrain(cfg, out)
    changed = {**cfg, "pretrain": {**cfg["pretrain"], "lr": 0.01}}
    with pytest.raises(ValueError, match=r"pretrain\.lr: 0\.001 -> 0\.01"):
        pt.load_pretrained_backbone(changed, build_backbone("conv4"), out / "backbone.pt")
    with pytest.raises(ValueError, match=r"holds a pre-training made with other settings"):
        pt.pretrain(changed, out)
    # the grid's own settings (train.*) do not matter: one pre-training serves every cell
    other_cell = {**cfg, "train": {**cfg["train"], "shot": 1, "lambda1": 0.3}}
    pt.load_pretrained_backbone(other_cell, build_backbone("conv4"), out / "backbone.pt")


def test_a_batch_larger_than_the_base_classes_is_refused_naming_the_key(tmp_path: Path):
    config = _cfg(tmp_path, batch_size=1000)
    prepare(config)
    with pytest.raises(ValueError, match=r"pretrain\.batch_size=1000 exceeds the 48"):
        pt.pretrain(config, tmp_path / "pre")


def test_the_workflow_restarts_a_pretraining_whose_settings_changed(cfg: dict, tmp_path: Path):
    out = tmp_path / "pre"
    pt.pretrain(cfg, out)
    changed = {**cfg, "pretrain": {**cfg["pretrain"], "max_steps": 4}}
    summary = pt.pretrain(changed, out, restart_changed=True)
    assert summary["steps"] == 4
    assert load_checkpoint(out / "backbone.pt")["config"]["pretrain"]["max_steps"] == 4


def test_a_training_run_starts_from_the_pretrained_backbone(cfg: dict, tmp_path: Path):
    from subspace_fsl import paths
    from subspace_fsl.engine.train import TrainingRun

    pt.pretrain(cfg, paths.pretrain_dir(cfg))
    weights = load_checkpoint(paths.pretrained_backbone(cfg))["backbone"]
    run_cfg = validate({**cfg, "train": {**cfg["train"], "init": "pretrained", "way": 2,
                                         "shot": 2, "query": 2, "val_episodes": 2}})
    run = TrainingRun(run_cfg, tmp_path / "run")
    run.setup()
    for key, value in run.model.backbone.state_dict().items():
        assert torch.equal(value, weights[key]), key
    # and from scratch, the same seed gives other weights
    scratch = TrainingRun({**run_cfg, "train": {**run_cfg["train"], "init": "scratch"}},
                          tmp_path / "scratch")
    scratch.setup()
    assert not all(torch.equal(v, weights[k])
                   for k, v in scratch.model.backbone.state_dict().items())
    # weights made from other pre-training settings are refused, naming the setting
    other = {**run_cfg, "pretrain": {**run_cfg["pretrain"], "lr": 0.01}}
    with pytest.raises(ValueError, match=r"pretrain\.lr: 0\.001 -> 0\.01"):
        TrainingRun(other, tmp_path / "other").setup()
