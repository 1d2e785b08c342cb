"""Cross-domain evaluation targets (``eval.targets``): settings, paths, classes, episode shape.

A target is another data set a trained model is evaluated on, never trained or selected on::

    eval:
      targets:
        cars: {dataset: {source: folder, root: /data/cars}, classes: all}
        cub-novel: {dataset: {source: cub}, classes: novel, split: {rule: closer-look}}

``dataset`` and ``split`` take the keys of the top-level sections (validated by the same
schema pieces). What is chosen where:

- the data set: the target's own ``dataset`` section, except ``name`` (the target's key),
  ``image_size`` and ``resize`` (the model's: a checkpoint sees images preprocessed as its
  training set); its raw data is ``dataset.root`` or ``{data_dir}/targets/{name}``, its cache
  ``{results_dir}/cache/targets/{dataset.name}/{name}`` (rebuilt when its stamp changes);
- the classes: ``all`` of them, or the ``novel`` classes of the target's ``split``;
- the episodes: ``way`` / ``shot`` (null: the model's ``train.way`` / ``train.shot``),
  ``episodes`` / ``query`` (null: ``eval.episodes`` / ``eval.query``), drawn from the one
  ``eval.seed`` over the target's classes: one fixed plan per target (and way, shot), the same
  for every model. A target with fewer classes than its way is refused, naming the key;
- the results: ``runs/{d}/{method}/{run}/eval/target-{name}/`` (:func:`eval_dir`), the
  columns ``target-{name}`` of the main and paired tables, ``target/{name}/acc`` in MLflow.

The validation choice (``subspace_fsl.selection``) reads the source's validation split only.
Torch-free: the workflow plans with it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from subspace_fsl import grid, paths, provenance

#: the evaluation folder (and table column, MLflow tag prefix) of target ``name``
PREFIX = "target-"
#: what a target takes from the model's data set rather than from its own section
MODEL_PREPROCESSING = ("image_size", "resize")


class TargetError(ValueError):
    """A target whose classes or images do not fit its episodes; names the setting."""


class Shape(NamedTuple):
    """The episodes of one target for one model: way, shot, queries per class, how many."""

    way: int
    shot: int
    query: int
    episodes: int


def names(cfg: Mapping[str, Any]) -> list[str]:
    """The targets of ``eval.targets``, in the configuration's order."""
    return list(cfg.get("eval", {}).get("targets") or {})


def settings(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The validated settings of target ``name``; ``TargetError`` naming the known ones."""
    declared = cfg.get("eval", {}).get("targets") or {}
    if name not in declared:
        known = ", ".join(declared) or "none"
        raise TargetError(f"eval.targets has no target {name!r} (declared: {known})")
    return declared[name]


def split_name(name: str) -> str:
    """``target-{name}``: the evaluation's folder and its ``split`` in the results table."""
    return f"{PREFIX}{name}"


def data_config(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The settings the target's raw data, cache and split are made from: ``cfg`` with the
    target's ``dataset`` (named ``name``, at the model's ``image_size`` / ``resize``) and
    ``split`` sections in place of its own."""
    target = settings(cfg, name)
    out = copy.deepcopy(dict(cfg))
    dataset = copy.deepcopy(dict(target["dataset"]))
    dataset["name"] = name
    for key in MODEL_PREPROCESSING:
        dataset[key] = cfg["dataset"][key]
    out["dataset"] = dataset
    out["split"] = copy.deepcopy(dict(target.get("split") or cfg["split"]))
    return out


def raw_root(cfg: Mapping[str, Any], name: str) -> Path:
    """``dataset.root`` of the target, else ``{data_dir}/targets/{name}``."""
    root = settings(cfg, name)["dataset"].get("root")
    return Path(root) if root else Path(cfg["data_dir"]) / "targets" / name


def cache_dir(cfg: Mapping[str, Any], name: str) -> Path:
    """``{results_dir}/cache/targets/{dataset.name}/{name}``: one cache per target and model
    data set (whose preprocessing it has)."""
    return paths.results_dir(cfg) / "cache" / "targets" / paths.dataset_name(cfg) / name


def eval_dir(cfg: Mapping[str, Any], method: str, run: str, name: str) -> Path:
    """``runs/{d}/{method}/{run}/eval/target-{name}``."""
    return paths.run_dir(cfg, method, run) / "eval" / split_name(name)


def eval_files(cfg: Mapping[str, Any], file: str = "summary.json") -> list[Path]:
    """Every run's evaluation on every target (what the workflow asks for)."""
    return [eval_dir(cfg, run.method, run.name, target) / file
            for run in grid.all_runs(cfg) for target in names(cfg)]


def classes(cfg: Mapping[str, Any], name: str, class_names: Sequence[str]) -> list[str]:
    """The target's evaluation classes among its data set's ``class_names`` (class_id order):
    all of them, or the ``novel`` set of the target's ``split`` (``data.splits.make_split``)."""
    from subspace_fsl.data.splits import make_split

    target = settings(cfg, name)
    names_ = [str(n) for n in class_names]
    if target["classes"] == "all":
        return names_
    split = data_config(cfg, name)["split"]
    extra = {"lists": split["lists"]} if split.get("lists") else {}
    return list(make_split(names_, split["rule"], split["counts"], split["seed"],
                           **extra)["novel"])


def shape(cfg: Mapping[str, Any], name: str, n_classes: int,
          smallest_class: int | None = None) -> Shape:
    """Way, shot, query, episodes of the target for a model trained with ``cfg['train']``:
    the target's own values, null ones from ``train`` / ``eval``. ``TargetError`` (naming the
    key) when the way exceeds the target's ``n_classes`` or shot + query its
    ``smallest_class`` image count."""
    target = settings(cfg, name)
    key = f"eval.targets.{name}"
    way = target["way"] or cfg["train"]["way"]
    shot = target["shot"] or cfg["train"]["shot"]
    query = target["query"] or cfg["eval"]["query"]
    episodes = target["episodes"] or cfg["eval"]["episodes"]
    if way > n_classes:
        origin = f"{key}.way={way}" if target["way"] else (
            f"{key}.way=null (the model's train.way={way})")
        raise TargetError(f"{origin} but target {name!r} has {n_classes} classes "
                          f"(classes: {target['classes']}); set {key}.way to at most {n_classes}")
    if smallest_class is not None and shot + query > smallest_class:
        raise TargetError(f"{key}: shot {shot} + query {query} = {shot + query} but the "
                          f"smallest class of target {name!r} has {smallest_class} images; set "
                          f"{key}.shot / {key}.query lower")
    return Shape(int(way), int(shot), int(query), int(episodes))


def episode_plan(cfg: Mapping[str, Any], name: str, labels: Any, class_ids: Sequence[int],
                 class_names: Sequence[str] | None = None) -> tuple[Shape, list[Any]]:
    """The target's fixed episodes over the cache rows ``labels`` restricted to
    ``class_ids``: :func:`shape` checked, then ``data.episodes.episode_plan`` from
    ``eval.seed``. It reads no model and no source split: every model gets the same plan."""
    import numpy as np

    from subspace_fsl.data.episodes import episode_plan as plan_of

    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=max(class_ids) + 1)[list(class_ids)]
    s = shape(cfg, name, len(class_ids), int(counts.min()))
    return s, plan_of(labels, class_ids, s.way, s.shot, s.query, s.episodes, cfg["eval"]["seed"],
                      class_names)


def record(cfg: Mapping[str, Any], checkpoint: str | Path, name: str) -> dict[str, Any]:
    """What a target evaluation depends on (its ``provenance``): the checkpoint's bytes, the
    target's resolved data settings and classes rule, the episode shape and ``eval.seed``."""
    from subspace_fsl.evaluation_record import file_digest

    target = settings(cfg, name)
    data = data_config(cfg, name)
    # at the model's train way / shot (a null target way follows them)
    return provenance.stamp({
        "checkpoint": file_digest(checkpoint),
        "target": name,
        "dataset": data["dataset"],
        "classes": target["classes"],
        "split": data["split"] if target["classes"] == "novel" else None,
        "train": {"way": cfg["train"]["way"], "shot": cfg["train"]["shot"]},
        "eval": {"way": target["way"], "shot": target["shot"],
                 "query": target["query"] or cfg["eval"]["query"],
                 "episodes": target["episodes"] or cfg["eval"]["episodes"],
                 "seed": cfg["eval"]["seed"]},
    })


def check_evaluation(folder: str | Path, cfg: Mapping[str, Any], checkpoint: str | Path,
                     name: str) -> dict[str, Any]:
    """The ``summary.json`` of a target evaluation if it was made from exactly this
    checkpoint and these target settings; else ``provenance.ProvenanceError``."""
    import json

    from subspace_fsl.evaluation_record import REMEDY, SUMMARY_FILE

    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"evaluation {path} does not exist")
    summary = json.loads(path.read_text())
    provenance.check(path, summary.get("provenance"), record(cfg, checkpoint, name),
                     remedy=REMEDY)
    return summary


def load_results(cfg: Mapping[str, Any], runs: Iterable[grid.Run] | None = None
                 ) -> pd.DataFrame:
    """The per-episode rows of every run's target evaluations, in ``results.load_results``'s
    columns: ``split`` = ``target-{name}``, ``eval_shot`` = the target's shot (an empty
    table without targets). Missing or stale evaluations raise as there."""
    from subspace_fsl.results import (
        BEST_FILE,
        EPISODES_FILE,
        RESULT_COLUMNS,
        SUMMARY_FILE,
        key_frame,
    )

    frames, missing = [], []
    for run in (grid.all_runs(cfg) if runs is None else runs):
        key = key_frame(run)
        run_cfg = grid.run_config(cfg, run.method, run.name)
        checkpoint = paths.run_dir(cfg, run.method, run.name) / BEST_FILE
        for name in names(cfg):
            folder = eval_dir(cfg, run.method, run.name, name)
            if not (folder / SUMMARY_FILE).is_file() or not checkpoint.is_file():
                missing.append(str(folder / SUMMARY_FILE))
                continue
            summary = check_evaluation(folder, run_cfg, checkpoint, name)
            table = pd.read_csv(folder / EPISODES_FILE)[["episode", "accuracy"]]
            frames.append(table.assign(split=split_name(name), eval_shot=summary["shot"],
                                       **key))
    if missing:
        raise FileNotFoundError(f"{len(missing)} target evaluation(s) missing, e.g. {missing[0]}")
    if not frames:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]


def metric_names(name: str) -> dict[str, str]:
    """MLflow metric of each summary key of a target evaluation on the child run:
    ``target/{name}/acc``, ``.../ci95``, ``.../std`` (fractions, like ``novel_acc``)."""
    return {"mean": f"target/{name}/acc", "ci95": f"target/{name}/ci95",
            "std": f"target/{name}/std"}


def prepare_settings(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """What the target's cache is made from (its workflow job's params): the folders, the
    model's ``dataset`` (its preprocessing and name) and this target's data set, split and
    classes alone (its episode settings change the evaluations, not the images)."""
    target = {key: copy.deepcopy(value) for key, value in settings(cfg, name).items()
              if key in CACHE_KEYS}
    return {"results_dir": cfg["results_dir"], "data_dir": cfg["data_dir"],
            "dataset": copy.deepcopy(cfg["dataset"]), "eval": {"targets": {name: target}}}


# the target settings its cache is made from (the others fix its episodes)
CACHE_KEYS = ("dataset", "split", "classes")


def evaluation_settings(cfg: Mapping[str, Any], method: str, run: str, name: str
                        ) -> dict[str, Any]:
    """What one run's evaluation on target ``name`` depends on: the run's settings (the
    model, ``grid.run_settings``), ``eval.episodes`` and this target's settings, not the
    other targets' (adding a target re-runs no evaluation)."""
    out = grid.run_settings(cfg, method, run)
    out["eval"] = {**out["eval"], "episodes": cfg["eval"]["episodes"],
                   "targets": {name: copy.deepcopy(settings(cfg, name))}}
    return out


def eval_shape(cfg: Mapping[str, Any], name: str, way: int, shot: int) -> tuple[int, int]:
    """(way, shot) of the target's episodes for a model trained at (way, shot)."""
    target = settings(cfg, name)
    return int(target["way"] or way), int(target["shot"] or shot)


def column_label(cfg: Mapping[str, Any], name: str, way: int, shot: int) -> str:
    """``target cars: 5-way 1-shot``, with ``(trained 10-way 1-shot)`` where the target's
    episodes differ from the training ones (a table column of a target)."""
    eval_way, eval_shot = eval_shape(cfg, name, way, shot)
    label = f"{split_name(name)}: {eval_way}-way {eval_shot}-shot"
    return label if (eval_way, eval_shot) == (way, shot) else (
        f"{label} (trained {way}-way {shot}-shot)")


def description(cfg: Mapping[str, Any]) -> str:
    """One sentence for a table caption naming each target (source, classes, episodes)."""
    if not names(cfg):
        return ""
    parts = []
    for name in names(cfg):
        target = settings(cfg, name)
        episodes = target["episodes"] or cfg["eval"]["episodes"]
        parts.append(f"{split_name(name)} = {target['classes']} classes of the "
                     f"{target['dataset']['source']} data set {name!r} ({episodes} episodes)")
    return ("Cross-domain targets (evaluated only, never trained or selected on): "
            + "; ".join(parts) + ".")
