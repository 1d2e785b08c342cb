"""A trained model on a cross-domain target's fixed episodes (``eval.targets``, see
``subspace_fsl.targets``): the target's cache at the model's preprocessing, its classes, its
episode plan, then ``engine.evaluate.episode_accuracies`` as for the novel classes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from subspace_fsl import targets
from subspace_fsl.config import atomic_write_text, save_config
from subspace_fsl.engine.data import EngineData, place_cache
from subspace_fsl.engine.evaluate import (
    checkpoint_settings,
    episode_accuracies,
    load_model,
    summarise,
)
from subspace_fsl.engine.model import check_head_episode
from subspace_fsl.evaluation_record import SUMMARY_FILE
from subspace_fsl.runtime import configure

log = logging.getLogger(__name__)


def prepare_target(cfg: dict[str, Any], name: str, cache_dir: str | os.PathLike[str] | None = None,
                   *, workers: int | None = None, progress: bool = True) -> Path:
    """The target's image cache (``data.cache.prepare`` on ``targets.data_config``): read or
    fetch its raw data, decode at the model's ``image_size`` / ``resize``."""
    from subspace_fsl.data.cache import prepare

    return prepare(targets.data_config(cfg, name), targets.raw_root(cfg, name),
                   cache_dir or targets.cache_dir(cfg, name), workers=workers,
                   progress=progress)


def open_target(cfg: dict[str, Any], name: str, cache_dir: str | os.PathLike[str] | None = None,
                progress: bool = False) -> tuple[EngineData, list[int]]:
    """The target's verified cache as ``EngineData`` (its classes as the ``novel`` set) and
    the class ids evaluated."""
    from subspace_fsl.data.cache import ImageCache, check_cache_settings

    directory = Path(cache_dir) if cache_dir is not None else prepare_target(
        cfg, name, progress=progress)
    cache = ImageCache.open(directory, verify=True)
    check_cache_settings(cache, targets.data_config(cfg, name))
    evaluated = targets.classes(cfg, name, [str(n) for n in cache.class_names])
    data = EngineData(cache=cache, split={"novel": evaluated})
    return data, data.split_classes("novel")


def evaluate_target(cfg: dict[str, Any], checkpoint: str | os.PathLike[str], name: str,
                    out_dir: str | os.PathLike[str], *,
                    cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on target ``name``: writes ``episodes.csv``, ``config.yaml`` and,
    last, ``summary.json`` (``provenance`` = ``targets.record``) into ``out_dir``, and logs
    ``target/{name}/acc`` / ``ci95`` / ``std`` into the checkpoint's MLflow run."""
    from subspace_fsl import tracking

    out = Path(out_dir)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    runtime = configure(cfg)
    model, state = load_model(checkpoint, runtime)
    cfg = checkpoint_settings(cfg, state["config"], checkpoint)
    targets.settings(cfg, name)  # an unknown target: before any data is read
    data, class_ids = open_target(cfg, name, cache_dir, progress=runtime.progress == "bar")
    shape, plan = targets.episode_plan(cfg, name, data.labels, class_ids)
    check_head_episode(model, shape.way, shape.shot,
                       f"eval.targets.{name} ({shape.way}-way {shape.shot}-shot)",
                       state["config"]["model"])
    place_cache(data, runtime)
    log.info("evaluating %s on target %s: %d episodes (%d-way %d-shot, %d queries per class) "
             "over %d classes", checkpoint, name, len(plan), shape.way, shape.shot, shape.query,
             len(class_ids))
    accuracies = episode_accuracies(model, data, plan, cfg["eval"]["batch_size"], runtime)
    target = targets.settings(cfg, name)
    summary = {
        **summarise(accuracies),
        "episodes": len(plan), "way": shape.way, "shot": shape.shot,
        "train_way": cfg["train"]["way"], "train_shot": cfg["train"]["shot"],
        "query": shape.query, "seed": cfg["eval"]["seed"],
        "split": targets.split_name(name), "target": name,
        "target_source": target["dataset"]["source"], "classes": target["classes"],
        "n_classes": len(class_ids),
        "backbone": state["config"]["model"]["backbone"],
        "head": state["config"]["model"]["head"],
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_episode": state.get("episode"),
        "data_stamp": data.stamp, "cache": str(data.cache.directory),
        "provenance": targets.record(cfg, checkpoint, name),
        "episodes_digest": tracking.episodes_digest(plan),
    }
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"episode": np.arange(len(plan)), "seed": cfg["eval"]["seed"],
                          "accuracy": accuracies})
    atomic_write_text(out / "episodes.csv", table.to_csv(index=False))
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    log_target(cfg, Path(checkpoint).resolve().parent, summary, out)
    log.info("target %s accuracy %.2f%% +- %.2f%% over %d episodes", name,
             100 * summary["mean"], 100 * summary["ci95"], len(plan))
    return summary


def log_target(cfg: dict[str, Any], run_dir: Path, summary: dict[str, Any], out: Path) -> None:
    """The target's metrics (``targets.metric_names``) at the checkpoint's episode, its
    episodes' digest as the tag ``target-{name}_episodes_digest`` and its files under
    ``eval/target-{name}``, into the run's MLflow run (``tracking.open_run``)."""
    from subspace_fsl import tracking

    tracker = tracking.open_run(cfg, run_dir)
    metrics = targets.metric_names(summary["target"])
    tracker.log_metrics({metric: summary[key] for key, metric in metrics.items()},
                        step=int(summary.get("checkpoint_episode") or 0))
    split = summary["split"]
    tracker.set_tags({f"{split}_episodes_digest": summary["episodes_digest"],
                      f"{split}_episodes": summary["episodes"]})
    for file in ("summary.json", "episodes.csv", "config.yaml"):
        if (out / file).is_file():
            tracker.log_artifact(out / file, f"eval/{split}")
