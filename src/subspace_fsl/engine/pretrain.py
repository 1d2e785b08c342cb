"""Pre-training the backbone once per data set and backbone, shared by every grid cell.

Modern few-shot pipelines (FEAT, DeepEMD, FRN, Meta-Baseline) first train the backbone with
ordinary batch classification over the base classes, then meta-train from those weights::

    min_{theta, W, b}  CE(W f_theta(x) + b, y),   (x, y) batches of base-class images

The linear classifier ``(W, b)`` is thrown away afterwards. Every ``pretrain.val_every``
steps the backbone alone is validated the few-shot way: ProtoNet's nearest class mean on the
fixed validation episodes (``pretrain.val_way``-way ``pretrain.val_shot``-shot, ``eval.query``
queries, ``eval.seed``), with the same evaluation code as meta-training; training stops after
``pretrain.patience`` checks without improvement or at ``pretrain.max_steps``.

``pretrain(cfg, out_dir)`` writes into ``out_dir`` (``paths.pretrain_dir``):

- ``config.yaml``   the settings the weights depend on (:func:`pretrain_settings`);
- ``checkpoint.pt`` backbone, classifier, optimiser, batch sampler and RNG states, history;
- ``backbone.pt``   the best backbone weights (``{"config", "backbone", "step", "val_acc"}``);
- ``history.csv``, ``pretrain_summary.json`` and ``done`` (last).

A killed run resumes from ``checkpoint.pt``. A training run with ``train.init: pretrained``
loads ``backbone.pt`` (:func:`load_pretrained_backbone`) and refuses one made from other
settings, naming the setting and both values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from subspace_fsl.config import atomic_write_text, read_yaml, save_config
from subspace_fsl.data.splits import split_settings
from subspace_fsl.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from subspace_fsl.provenance import differences
from subspace_fsl.readers import read_json

log = logging.getLogger(__name__)

CHECKPOINT, BACKBONE, HISTORY, SUMMARY, DONE = (
    "checkpoint.pt",
    "backbone.pt",
    "history.csv",
    "pretrain_summary.json",
    "done",
)
HISTORY_COLUMNS = ["step", "train_loss", "train_acc", "val_acc", "val_ci95", "lr"]


def pretrain_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the pre-trained weights depend on: the data set, the split, the backbone, the
    ``pretrain`` section and the validation episodes' query count and seed (not the grid,
    not ``train``: one pre-training serves every grid cell)."""
    return {
        "dataset": dict(cfg["dataset"]),
        "split": split_settings(cfg["split"]),
        "model": {k: cfg["model"][k] for k in ("backbone", "backbone_weights")},
        "pretrain": dict(cfg["pretrain"]),
        "eval": {k: cfg["eval"][k] for k in ("query", "seed", "batch_size")},
    }


class BatchSampler:
    """``batch_size`` distinct base-class images per step, labels 0..n_classes-1 (resumable)."""

    def __init__(self, labels: np.ndarray, classes: list[int], batch_size: int, seed: int):
        labels = np.asarray(labels, dtype=np.int64)
        self.rows = np.flatnonzero(np.isin(labels, classes))
        remap = {c: i for i, c in enumerate(classes)}
        self.targets = np.array([remap[int(c)] for c in labels[self.rows]], dtype=np.int64)
        if batch_size > len(self.rows):
            raise ValueError(
                f"pretrain.batch_size={batch_size} exceeds the {len(self.rows)} base-class images"
            )
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        picked = self.rng.choice(len(self.rows), self.batch_size, replace=False)
        return self.rows[picked], self.targets[picked]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class Pretraining:
    """One pre-training run in ``out``: ``resume()``, then ``step()`` / ``validate()`` until
    ``stopped``, ``checkpoint()`` along the way, ``finish()`` at the end."""

    def __init__(self, cfg: Mapping[str, Any], out: Path, data: Any) -> None:
        from subspace_fsl.backbones import build_backbone
        from subspace_fsl.data.episodes import EpisodeLoader
        from subspace_fsl.engine.evaluate import evaluation_plan
        from subspace_fsl.heads import build_head
        from subspace_fsl.runtime import configure

        self.cfg, self.out, self.data = cfg, out, data
        self.settings = cfg["pretrain"]
        self.runtime = configure(cfg)
        seed_everything(self.settings["seed"])
        model = cfg["model"]
        self.backbone = build_backbone(model["backbone"], weights=model["backbone_weights"])
        self.feature_dim = int(self.backbone.output_dim(cfg["dataset"]["image_size"]))
        base = data.split_classes("base")
        self.classifier = nn.Linear(self.feature_dim, len(base))
        self.backbone.to(self.runtime.device)
        self.classifier.to(self.runtime.device)
        self.optimizer = torch.optim.Adam(
            [*self.backbone.parameters(), *self.classifier.parameters()],
            lr=self.settings["lr"],
            weight_decay=self.settings["weight_decay"],
        )
        self.sampler = BatchSampler(
            data.labels, base, self.settings["batch_size"], self.settings["seed"]
        )
        self.loader = EpisodeLoader(
            data, self.runtime.device, self.settings["augment"], self.runtime.channels_last
        )
        self.val_plan = evaluation_plan(
            {**cfg, "train": {"way": self.settings["val_way"], "shot": self.settings["val_shot"]}},
            data,
            "val",
            episodes=self.settings["val_episodes"],
        )
        # validation: the backbone's features with ProtoNet's nearest class mean
        self.val_head = build_head("protonet", self.feature_dim)
        self.state: dict[str, Any] = {
            "step": 0,
            "best_val_acc": -1.0,
            "best_step": 0,
            "bad_checks": 0,
            "stopped": None,
            "history": [],
            "best_backbone": None,
        }
        self.window = [0.0, 0.0, 0]  # loss sum, accuracy sum, steps since the last row

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when there is one."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        saved = load_checkpoint(path, map_location="cpu")
        self.backbone.load_state_dict(saved["backbone"])
        self.classifier.load_state_dict(saved["classifier"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.sampler.load_state_dict(saved["sampler"])
        set_rng_state(saved["rng"])
        self.state.update({k: saved[k] for k in self.state})
        self.window = list(saved["window"])
        log.info("resuming pre-training %s from step %d", self.out, self.state["step"])

    def step(self) -> None:
        """One batch: load (augment), forward, cross-entropy, backward, Adam step."""
        rows, targets = self.sampler.sample()
        images = self.loader.load(rows)
        labels = torch.as_tensor(targets, device=self.runtime.device)
        self.backbone.train()
        self.classifier.train()
        with self.runtime.autocast():
            logits = self.classifier(self.backbone(images)).float()
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        loss_value, acc_value = torch.stack([loss.detach(), accuracy]).tolist()
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"non-finite pre-training loss at step {self.state['step'] + 1}; "
                f"lower pretrain.lr={self.settings['lr']}"
            )
        self.state["step"] += 1
        self.window = [self.window[0] + loss_value, self.window[1] + acc_value, self.window[2] + 1]

    @property
    def due(self) -> bool:
        """Whether this step is a validation step."""
        step = self.state["step"]
        return step % self.settings["val_every"] == 0 or step == self.settings["max_steps"]

    def validate(self) -> float:
        """Mean validation-episode accuracy of the backbone now; keeps the best weights."""
        from subspace_fsl.engine.evaluate import episode_accuracies, summarise
        from subspace_fsl.engine.model import FewShotModel

        probe = FewShotModel(self.backbone, self.val_head.to(self.runtime.device), self.feature_dim)
        summary = summarise(
            episode_accuracies(
                probe, self.data, self.val_plan, self.cfg["eval"]["batch_size"], self.runtime
            )
        )
        state, n = self.state, max(self.window[2], 1)
        state["history"].append(
            {
                "step": state["step"],
                "train_loss": self.window[0] / n,
                "train_acc": self.window[1] / n,
                "val_acc": summary["mean"],
                "val_ci95": summary["ci95"],
                "lr": self.optimizer.param_groups[0]["lr"],
            }
        )
        self.window = [0.0, 0.0, 0]
        if summary["mean"] > state["best_val_acc"]:
            state.update(best_val_acc=summary["mean"], best_step=state["step"], bad_checks=0)
            state["best_backbone"] = {
                k: v.detach().to("cpu", copy=True) for k, v in self.backbone.state_dict().items()
            }
        else:
            state["bad_checks"] += 1
            if state["bad_checks"] >= self.settings["patience"]:
                state["stopped"] = "early_stopping"
        if state["step"] >= self.settings["max_steps"] and state["stopped"] is None:
            state["stopped"] = "max_steps"
        log.info(
            "pre-training step %d: val acc %.2f%% +- %.2f%% (best %.2f%% at %d)",
            state["step"],
            100 * summary["mean"],
            100 * summary["ci95"],
            100 * state["best_val_acc"],
            state["best_step"],
        )
        return summary["mean"]

    def checkpoint(self) -> None:
        """Everything needed to continue, written atomically, and the history so far."""
        save_checkpoint(
            {
                "config": pretrain_settings(self.cfg),
                "backbone": self.backbone.state_dict(),
                "classifier": self.classifier.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler.state_dict(),
                "rng": rng_state(),
                **self.state,
                "window": list(self.window),
            },
            self.out / CHECKPOINT,
        )
        table = pd.DataFrame(self.state["history"], columns=HISTORY_COLUMNS)
        atomic_write_text(self.out / HISTORY, table.to_csv(index=False))

    def finish(self) -> dict[str, Any]:
        """Write ``backbone.pt``, the summary, then ``done``; return the summary."""
        state = self.state
        save_checkpoint(
            {
                "config": pretrain_settings(self.cfg),
                "backbone": state["best_backbone"],
                "step": state["best_step"],
                "val_acc": state["best_val_acc"],
                "feature_dim": self.feature_dim,
            },
            self.out / BACKBONE,
        )
        summary = {
            "steps": state["step"],
            "stopped": state["stopped"],
            "best_step": state["best_step"],
            "best_val_acc": state["best_val_acc"],
            "validation_checks": len(state["history"]),
        }
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        atomic_write_text(self.out / DONE, f"finished after {state['step']} steps\n")
        return summary


class SettingsChanged(ValueError):
    """A pre-training folder made with other settings."""


def check_same_pretraining(cfg: Mapping[str, Any], out: Path) -> None:
    """Refuse to resume or reuse a pre-training folder made with other settings."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = read_yaml(saved_path, "pre-training settings") or {}
    diff = differences(saved, pretrain_settings(cfg))
    if diff:
        raise SettingsChanged(
            f"{out} holds a pre-training made with other settings ({'; '.join(diff[:5])}); "
            f"choose another --out or delete that folder"
        )


def pretrain(
    cfg: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    split_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    restart_changed: bool = False,
) -> dict[str, Any]:
    """Pre-train (or resume, or return the summary of a finished run) into ``out_dir``.

    A folder made with other settings is refused, or, with ``restart_changed`` (the
    workflow's pretrain stage, which re-runs because its settings changed), removed and
    started afresh."""
    from subspace_fsl.engine.data import open_data

    out = Path(out_dir)
    try:
        check_same_pretraining(cfg, out)
    except SettingsChanged as exc:
        if not restart_changed:
            raise
        log.warning("%s: starting afresh, the settings changed: %s", out, exc)
        shutil.rmtree(out)
    if all((out / name).is_file() for name in (DONE, BACKBONE, SUMMARY)):
        log.info("%s is finished; nothing to do", out)
        return read_json(out / SUMMARY, "delete it and run pretrain again (it is rewritten)")
    data = open_data(cfg, split_file=split_file, cache_dir=cache_dir)
    run = Pretraining(cfg, out, data)
    run.resume()
    out.mkdir(parents=True, exist_ok=True)
    save_config(pretrain_settings(cfg), out / "config.yaml")
    # a finished run whose backbone.pt or summary was deleted is re-finished from the checkpoint
    while run.state["stopped"] is None:
        run.step()
        if run.due:
            run.validate()
            run.checkpoint()
    summary = run.finish()
    log.info("pre-training finished: %s", summary)
    return summary


def load_pretrained_backbone(
    cfg: Mapping[str, Any], backbone: nn.Module, path: str | os.PathLike[str]
) -> dict[str, Any]:
    """Load ``backbone.pt`` into ``backbone``; refuse weights made from other settings."""
    state = load_checkpoint(path, map_location="cpu")
    diff = differences(state["config"], pretrain_settings(cfg))
    if diff:
        raise ValueError(
            f"pre-trained backbone {path} was made with other settings ({'; '.join(diff[:5])}); "
            f"re-run the pretrain stage"
        )
    backbone.load_state_dict(state["backbone"])
    return state
