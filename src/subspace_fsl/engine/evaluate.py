"""Episodic evaluation on cached features (method.md step 3), also used for validation.

Every image of the evaluated split is embedded ONCE (batches of ``eval.batch_size`` under
``torch.inference_mode``); the episodes (``eval.episodes``, ``eval.query`` queries per class,
one ``eval.seed`` shared by every method) then run on those features with the head alone.
The backbone is deterministic in eval mode, so this equals re-embedding each episode's
images, at a fraction of the cost. With ``model.flip_support`` the mirror images of the
episodes' support images are embedded once as well (batched the same way), and each such
episode's head gets ``[support features, mirrored support features]`` with labels repeated.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from subspace_fsl.config import (
    atomic_directory,
    atomic_write_text,
    check_replaceable,
    save_config,
)
from subspace_fsl.engine.checkpoint import load_checkpoint
from subspace_fsl.engine.data import EngineData, check_episode_fits, open_data, place_cache
from subspace_fsl.engine.features import FeatureError, FeatureTable, feature_data, open_features
from subspace_fsl.engine.model import FewShotModel, build_model, check_head_episode, mirrored
from subspace_fsl.evaluation_record import SUMMARY_FILE, evaluation_record
from subspace_fsl.frozen_protocol import is_frozen
from subspace_fsl.paths import protocol
from subspace_fsl.runtime import Runtime, configure, no_grad_eval, place_model, to_input

log = logging.getLogger(__name__)

SPLIT_NAMES = ("val", "novel", "base")


def embed_images(
    model: FewShotModel, data: EngineData, indices: np.ndarray, batch_size: int, runtime: Runtime,
    mirror: bool = False,
) -> torch.Tensor:
    """Features ``[len(indices), D]`` (float32, on the device) of cached images, in batches
    (of their horizontal mirror images with ``mirror``)."""
    chunks = []
    with no_grad_eval(model):
        for start in range(0, len(indices), batch_size):
            images = data.images_to_tensor(indices[start : start + batch_size], runtime.device)
            if mirror:
                images = mirrored(images)
            with runtime.autocast():
                chunks.append(model.backbone(to_input(images, runtime)).float())
    return torch.cat(chunks) if chunks else torch.empty(0, model.feature_dim, device=runtime.device)


def episode_accuracies(
    model: FewShotModel,
    data: EngineData,
    episodes: Sequence[Any],
    batch_size: int,
    runtime: Runtime,
) -> np.ndarray:
    """Accuracy of each episode, computed on features embedded once for all of them (and,
    for the episodes whose support is flipped, once on the mirror images of their support):
    a :class:`FeatureTable` of just those images, then :func:`table_accuracies`."""
    needed = (
        np.unique(np.concatenate([np.concatenate([e.support_idx, e.query_idx]) for e in episodes]))
        if episodes
        else np.zeros(0, dtype=np.int64)
    )
    features = embed_images(model, data, needed, batch_size, runtime)
    row_of = np.full(int(needed.max()) + 1 if len(needed) else 0, -1, dtype=np.int64)
    row_of[needed] = np.arange(len(needed))
    flipped_support = [e.support_idx for e in episodes if model.flips(_shot_of(e))]
    mirror_needed = (
        np.unique(np.concatenate(flipped_support)) if flipped_support
        else np.zeros(0, dtype=np.int64)
    )
    mirror = None
    if len(mirror_needed):
        mirror = torch.zeros_like(features)
        mirror[torch.from_numpy(row_of[mirror_needed]).to(features.device)] = embed_images(
            model, data, mirror_needed, batch_size, runtime, mirror=True
        )
    table = FeatureTable(features, mirror, stamp="")
    return table_accuracies(model, table, episodes, index=row_of)


def _shot_of(episode: Any) -> int:
    """Support images per class of an episode (on the host: support images / classes)."""
    return len(episode.support_labels) // len(np.unique(episode.support_labels))


def table_accuracies(
    model: FewShotModel, table: FeatureTable, episodes: Sequence[Any],
    index: np.ndarray | None = None,
) -> np.ndarray:
    """Accuracy of each episode with the head alone on stored features
    (:meth:`FeatureTable.episode`; ``index`` maps cache rows to table rows, None = the same),
    the support's mirrored features appended where ``model.flip_support`` says so."""
    device = table.features.device
    accuracies = []
    with no_grad_eval(model):
        for episode in episodes:
            flip = model.flips(_shot_of(episode))
            support_idx, query_idx = episode.support_idx, episode.query_idx
            if index is not None:
                support_idx, query_idx = index[support_idx], index[query_idx]
            support, query = table.episode(support_idx, query_idx, mirror_support=flip)
            support_labels = torch.as_tensor(episode.support_labels, device=device)
            if flip:
                support_labels = torch.cat([support_labels, support_labels])
            query_labels = torch.as_tensor(episode.query_labels, device=device)
            logits = model.head(support, support_labels, query).logits
            accuracies.append((logits.argmax(dim=1) == query_labels).double().mean())
    # one device -> host copy at the end, not one sync per episode
    if not accuracies:
        return np.zeros(0, dtype=np.float64)
    return torch.stack(accuracies).cpu().numpy()


def summarise(accuracies: np.ndarray) -> dict[str, float]:
    """mean, std and ci95 = 1.96 std / sqrt(n) with the sample std (ddof = 1): the
    convention of ``subspace_fsl.stats``, so a summary.json and the tables built from the
    same episodes print the same interval."""
    from subspace_fsl import stats

    n = len(accuracies)
    if not n:
        return {"mean": math.nan, "std": math.nan, "ci95": math.nan}
    mean, ci95 = stats.mean_ci(accuracies)
    std = float(np.std(accuracies, ddof=1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "ci95": ci95}


def evaluation_plan(
    cfg: Mapping[str, Any],
    data: EngineData,
    split_name: str,
    episodes: int | None = None,
    way: int | None = None,
    shot: int | None = None,
    shot_key: str = "train.shot",
) -> list[Any]:
    """The fixed episodes of a split: ``eval.seed``, ``eval.query``; way and shot of training
    (``shot``: another one, named ``shot_key`` in errors)."""
    from subspace_fsl.data.episodes import episode_plan

    way = cfg["train"]["way"] if way is None else way
    shot = cfg["train"]["shot"] if shot is None else shot
    query = cfg["eval"]["query"]
    classes = data.split_classes(split_name)
    check_episode_fits(data, split_name, way, shot, query, "eval.query", shot_key)
    return episode_plan(
        data.labels,
        classes,
        way,
        shot,
        query,
        episodes or cfg["eval"]["episodes"],
        cfg["eval"]["seed"],
    )


def load_model(
    checkpoint: str | os.PathLike[str], runtime: Runtime
) -> tuple[FewShotModel, dict[str, Any]]:
    """Rebuild the checkpoint's model (its own stored settings) and load its weights."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    # the checkpoint has the weights: no need for the backbone's initial weights file
    settings = {**state["config"], "model": {**state["config"]["model"], "backbone_weights": None}}
    model = build_model(settings)
    model.load_state_dict(state["model"])
    return place_model(model, runtime), state


#: settings a checkpoint fixes: what the model is, what its images look like (the data set
#: and its preprocessing), which classes it was trained on (the split) and the episodes'
#: way and shot (train.*). Only eval.*, runtime.*, tracking.*, the folders and how the
#: data set is fetched may differ from the checkpoint's own settings.
FIXED_BY_CHECKPOINT = (
    "model",
    "dataset.name",
    "dataset.source",
    "dataset.root",
    "dataset.crop_to_bbox",
    "dataset.image_size",
    "dataset.resize",
    "dataset.synthetic",
    "split",
    "train",
)

_MISSING = object()


def _lookup(settings: Mapping[str, Any], key: str) -> Any:
    node: Any = settings
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _leaves(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for name, child in value.items():
            yield from _leaves(child, f"{key}.{name}")
    else:
        yield key, value


def checkpoint_settings(
    cfg: Mapping[str, Any], saved: Mapping[str, Any], checkpoint: str | os.PathLike[str]
) -> dict[str, Any]:
    """``cfg`` with every :data:`FIXED_BY_CHECKPOINT` setting taken from the checkpoint's own
    settings ``saved``; a ``ValueError`` naming each key and both values where ``cfg``
    (``--config`` / ``--set``) asks for something else, which the checkpoint cannot do."""
    used = copy.deepcopy(dict(cfg))
    conflicts = []
    for key in FIXED_BY_CHECKPOINT:
        for leaf, theirs in _leaves(_lookup(saved, key), key):
            if theirs is _MISSING:
                continue  # a setting newer than the checkpoint: nothing to compare
            ours = _lookup(cfg, leaf)
            if ours is not _MISSING and ours != theirs:
                conflicts.append(f"{leaf}={ours!r} (the checkpoint's: {theirs!r})")
            *parents, name = leaf.split(".")
            node = used
            for part in parents:
                node = node.setdefault(part, {})
            node[name] = copy.deepcopy(theirs)
    if conflicts:
        raise ValueError(
            f"checkpoint {checkpoint} fixes {', '.join(conflicts)}; evaluate may change only "
            f"eval.*, runtime.*, tracking.* and the folders: drop these --set / --config values"
        )
    return used


#: what an evaluation folder holds (``summary.json`` last)
EVALUATION_FILES = ("episodes.csv", "config.yaml", SUMMARY_FILE)


def write_evaluation(
    out: Path, table: pd.DataFrame, cfg: Mapping[str, Any], summary: Mapping[str, Any]
) -> None:
    """``episodes.csv``, ``config.yaml``, then ``summary.json`` into a temporary folder beside
    ``out``, which then replaces ``out`` in one swap (``config.atomic_directory``): the
    earlier evaluation stays complete and current until the new one is."""
    with atomic_directory(out, allowed=EVALUATION_FILES) as tmp:
        atomic_write_text(tmp / "episodes.csv", table.to_csv(index=False))
        save_config(cfg, tmp / "config.yaml")
        atomic_write_text(tmp / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def evaluate(
    cfg: Mapping[str, Any],
    checkpoint: str | os.PathLike[str],
    split_name: str,
    out_dir: str | os.PathLike[str],
    *,
    split_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    shot: int | None = None,
    features_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``split_name`` (``novel``, or ``val`` for choosing lambdas)
    at ``shot`` support images per class (None: the training shot ``train.shot``; another
    shot is one of ``eval.shots``, on the ``eval.seed`` plan of that shot).

    Writes ``episodes.csv`` (episode, seed, accuracy), ``config.yaml`` (the settings used:
    :func:`checkpoint_settings`) and, last, ``summary.json`` (with ``provenance``:
    ``evaluation_record``); logs them into the MLflow run of the checkpoint's run directory.
    The files replace an earlier evaluation in ``out_dir`` as a whole (:func:`write_evaluation`):
    an evaluation killed at any point leaves the earlier one complete and current.

    A frozen run (``train.backbone: frozen``, from the checkpoint) is evaluated on the stored
    features (``features_file``, default ``paths.features_path``), checked current and equal
    to the table the checkpoint was trained on; no image is read.
    """
    from subspace_fsl import tracking

    if split_name not in SPLIT_NAMES:
        raise ValueError(f"split={split_name!r}; choose one of: {', '.join(SPLIT_NAMES)}")
    out = Path(out_dir)
    check_replaceable(out, EVALUATION_FILES)  # it will be replaced as a whole: refuse at once
    runtime = configure(cfg)
    model, state = load_model(checkpoint, runtime)
    # what was used, and what config.yaml records: the checkpoint's model, data and episodes
    cfg = checkpoint_settings(cfg, state["config"], checkpoint)
    table = None
    if is_frozen(cfg):
        table = open_features(cfg, features_file, cache_dir)
        if state.get("features_stamp") != table.stamp:
            raise FeatureError(
                f"checkpoint {checkpoint} was trained on features {state.get('features_stamp')}"
                f" but {table.path} is {table.stamp}; train the run again on the current features"
            )
        data = feature_data(cfg, table, split_file)
    else:
        data = open_data(
            cfg, split_file=split_file, cache_dir=cache_dir, progress=runtime.progress == "bar"
        )
    way, train_shot = cfg["train"]["way"], cfg["train"]["shot"]
    shot = train_shot if shot is None else int(shot)
    shot_key = ("train.shot" if shot == train_shot else
                f"the evaluation shot (--shot / eval.shots; trained at train.shot={train_shot})")
    check_head_episode(model, way, shot, f"train.way={way}, {shot_key}={shot}",
                       state["config"]["model"])
    plan = evaluation_plan(cfg, data, split_name, shot=shot, shot_key=shot_key)
    if table is None:
        place_cache(data, runtime)
    log.info(
        "evaluating %s on %d %s episodes (%d-way %d-shot, %d queries per class)",
        checkpoint,
        len(plan),
        split_name,
        way,
        shot,
        cfg["eval"]["query"],
    )
    if table is None:
        accuracies = episode_accuracies(model, data, plan, cfg["eval"]["batch_size"], runtime)
    else:
        accuracies = table_accuracies(model, table.to(runtime.device), plan)
    summary = {
        **summarise(accuracies),
        "episodes": len(plan),
        "way": way,
        "shot": shot,
        "train_shot": train_shot,
        "query": cfg["eval"]["query"],
        "seed": cfg["eval"]["seed"],
        "split": split_name,
        "split_rule": data.split["rule"],
        "split_seed": data.split.get("seed"),
        "backbone": state["config"]["model"]["backbone"],
        "head": state["config"]["model"]["head"],
        "protocol": protocol(cfg),
        "features_stamp": None if table is None else table.stamp,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_episode": state.get("episode"),
        "data_stamp": data.stamp,
        "provenance": evaluation_record(cfg, checkpoint, split_name, data.split_file, shot),
        "episodes_digest": tracking.episodes_digest(plan),
    }
    episodes = pd.DataFrame(
        {"episode": np.arange(len(plan)), "seed": cfg["eval"]["seed"], "accuracy": accuracies}
    )
    write_evaluation(out, episodes, cfg, summary)

    # novel_acc / novel_ci95 (val_eval_* on val) and the episodes' digest into the training run
    tracking.log_evaluation(cfg, Path(checkpoint).resolve().parent, summary, out,
                            summary["episodes_digest"])
    log.info(
        "%s accuracy %.2f%% +- %.2f%% over %d episodes",
        split_name,
        100 * summary["mean"],
        100 * summary["ci95"],
        len(plan),
    )
    return summary


def evaluate_many(
    cfgs: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[str | os.PathLike[str]],
    split_name: str,
    out_dirs: Sequence[str | os.PathLike[str]],
    **options: Any,
) -> list[dict[str, Any]]:
    """:func:`evaluate` of each (settings, checkpoint, folder) in one process: the cells of a
    group trained together (``train.batch_cells``) pay one start-up for all their evaluations;
    each result is the single evaluation's, written and logged as :func:`evaluate` does."""
    if not len(cfgs) == len(checkpoints) == len(out_dirs):
        raise ValueError(f"{len(cfgs)} settings, {len(checkpoints)} checkpoints and "
                         f"{len(out_dirs)} folders: one of each per evaluation")
    return [evaluate(cfg, checkpoint, split_name, out, **options)
            for cfg, checkpoint, out in zip(cfgs, checkpoints, out_dirs, strict=True)]
