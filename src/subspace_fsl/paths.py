"""Every derived path, from the settings alone: the one place the package and the workflow share.

Layout below ``results_dir`` (``{d}`` = ``dataset.name``)::

    cache/{d}/                         decoded image cache (data.cache)
    splits/{d}.json                    base / validation / novel class names
    tracking/{d}.json                  MLflow store + experiment set-up marker
    runs/{d}/{method}/{run}/           one trained model per grid cell (train)
    runs/{d}/{method}/{run}/eval/{split}/   episodes.csv + summary.json (evaluate)
    selection/{d}.csv                  lambdas (and S) chosen on the validation split
    tables/{d}/  plots/{d}/            the report

``{run}`` is :func:`run_name`, e.g. ``w5_k1_S4_l1-0.1_l2-0.01_seed0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

SPLITS = ("val", "novel")

_RUN_RE = re.compile(
    r"^w(?P<way>\d+)_k(?P<shot>\d+)_S(?P<n_subspaces>\d+)"
    r"_l1-(?P<lambda1>[0-9.e+-]+?)_l2-(?P<lambda2>[0-9.e+-]+?)_seed(?P<seed>-?\d+)$"
)


class RunKey(NamedTuple):
    """The grid coordinates of one training run (what its name encodes)."""

    way: int
    shot: int
    n_subspaces: int
    lambda1: float
    lambda2: float
    seed: int


def format_number(value: float) -> str:
    """Shortest readable form of a grid value: 0 -> "0", 0.10 -> "0.1", 1e-05 -> "1e-05"."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return format(number, "g") if float(format(number, "g")) == number else repr(number)


def run_name(way: int, shot: int, n_subspaces: int, lambda1: float, lambda2: float,
             seed: int) -> str:
    """``run_name(5, 1, 4, 0.1, 0.01, 0) == "w5_k1_S4_l1-0.1_l2-0.01_seed0"``."""
    return (f"w{int(way)}_k{int(shot)}_S{int(n_subspaces)}"
            f"_l1-{format_number(lambda1)}_l2-{format_number(lambda2)}_seed{int(seed)}")


def parse_run_name(name: str) -> RunKey:
    """Inverse of :func:`run_name`; ``ValueError`` for anything else."""
    match = _RUN_RE.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a run name like 'w5_k1_S4_l1-0.1_l2-0.01_seed0'")
    g = match.groupdict()
    return RunKey(int(g["way"]), int(g["shot"]), int(g["n_subspaces"]),
                  float(g["lambda1"]), float(g["lambda2"]), int(g["seed"]))


def run_name_of(cfg: Mapping[str, Any]) -> str:
    """The run name of the configuration's own train/model settings."""
    train, model = cfg["train"], cfg["model"]
    return run_name(train["way"], train["shot"], model["n_subspaces"], train["lambda1"],
                    train["lambda2"], train["seed"])


def results_dir(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["results_dir"])


def dataset_name(cfg: Mapping[str, Any]) -> str:
    return str(cfg["dataset"]["name"])


def raw_root(cfg: Mapping[str, Any]) -> Path:
    """Extracted (or synthesised) raw data: ``dataset.root`` or ``{data_dir}/{dataset.name}``."""
    root = cfg["dataset"].get("root")
    return Path(root) if root else Path(cfg["data_dir"]) / dataset_name(cfg)


def cache_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "cache" / dataset_name(cfg)


def split_path(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "splits" / f"{dataset_name(cfg)}.json"


def tracking_marker(cfg: Mapping[str, Any]) -> Path:
    """Written once the MLflow store and the data set's experiment exist."""
    return results_dir(cfg) / "tracking" / f"{dataset_name(cfg)}.json"


def runs_root(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "runs" / dataset_name(cfg)


def run_dir(cfg: Mapping[str, Any], method: str, run: str | None = None) -> Path:
    """``{results_dir}/runs/{dataset.name}/{method}/{run}``; ``run`` defaults to the
    configuration's own :func:`run_name_of` (a workflow may pass ``"{run}"``)."""
    return runs_root(cfg) / method / (run if run is not None else run_name_of(cfg))


def eval_dir(cfg: Mapping[str, Any], method: str, split: str, run: str | None = None) -> Path:
    """Where the evaluation of a run on ``split`` (``val`` or ``novel``) writes its files."""
    return run_dir(cfg, method, run) / "eval" / split


def selection_path(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "selection" / f"{dataset_name(cfg)}.csv"


def tables_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "tables" / dataset_name(cfg)


def plots_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "plots" / dataset_name(cfg)


def logs_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "logs" / dataset_name(cfg)


def benchmarks_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "benchmarks" / dataset_name(cfg)


def pretrain_dir(cfg: Mapping[str, Any]) -> Path:
    """``{results_dir}/pretrain/{dataset}/{backbone}``: one pre-training per data set and
    backbone, shared by every grid cell (its ``config.yaml`` says what it was made from)."""
    return results_dir(cfg) / "pretrain" / dataset_name(cfg) / str(cfg["model"]["backbone"])


def pretrained_backbone(cfg: Mapping[str, Any]) -> Path:
    """The pre-trained weights a ``train.init: pretrained`` run starts from."""
    return pretrain_dir(cfg) / "backbone.pt"
