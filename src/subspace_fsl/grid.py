"""The benchmark grid: which runs exist, and the full settings of each one.

A run is a ``(method, run name)`` pair. The method is ``model.head`` (the patent's method,
``multisubspace`` by default) trained at every ``way x shot x n_subspaces x lambda1 x lambda2 x
seed`` cell of the ``grid`` section, or a baseline from ``grid.baselines`` (its own head, S and
lambdas) trained at every ``way x shot x seed``. Every run of a data set uses the same episode
seeds, so all models see identical training and evaluation episodes.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from subspace_fsl import paths

#: sections that do not change a result (where it runs, where it is logged); kept out of the
#: workflow's rerun triggers
RUNTIME_SECTIONS = ("runtime", "tracking")


@dataclass(frozen=True)
class Run:
    """One training job: the method name and the readable run name (see ``paths.run_name``)."""

    method: str
    name: str

    @property
    def key(self) -> paths.RunKey:
        return paths.parse_run_name(self.name)


def method_name(cfg: Mapping[str, Any]) -> str:
    """The name under which the grid's own method is stored (``model.head``)."""
    return str(cfg["model"]["head"])


def baseline_names(cfg: Mapping[str, Any]) -> list[str]:
    return list(cfg["grid"]["baselines"])


def _check(cfg: Mapping[str, Any]) -> None:
    if method_name(cfg) in cfg["grid"]["baselines"]:
        raise ValueError(f"grid.baselines may not reuse the method's name {method_name(cfg)!r}")


def baseline_settings(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A baseline's head, S and lambdas (what its mapping sets, else the method's settings)."""
    entry = cfg["grid"]["baselines"][name]
    return {
        "head": entry["head"],
        "n_subspaces": entry.get("n_subspaces", cfg["model"]["n_subspaces"]),
        "subspace_dim": entry.get("subspace_dim", cfg["model"]["subspace_dim"]),
        "lambda1": entry.get("lambda1", cfg["train"]["lambda1"]),
        "lambda2": entry.get("lambda2", cfg["train"]["lambda2"]),
    }


def method_runs(cfg: Mapping[str, Any]) -> list[Run]:
    """Every grid cell and seed of the method."""
    _check(cfg)
    g = cfg["grid"]
    method = method_name(cfg)
    return [
        Run(method, paths.run_name(w, k, s, l1, l2, seed))
        for w, k, s, l1, l2, seed in itertools.product(
            g["way"], g["shot"], g["n_subspaces"], g["lambda1"], g["lambda2"], g["seeds"])
    ]


def baseline_runs(cfg: Mapping[str, Any]) -> list[Run]:
    """Every baseline at every (way, shot, seed) of the grid."""
    _check(cfg)
    g = cfg["grid"]
    runs = []
    for name in baseline_names(cfg):
        b = baseline_settings(cfg, name)
        for w, k, seed in itertools.product(g["way"], g["shot"], g["seeds"]):
            runs.append(Run(name, paths.run_name(w, k, b["n_subspaces"], b["lambda1"],
                                                 b["lambda2"], seed)))
    return runs


def all_runs(cfg: Mapping[str, Any]) -> list[Run]:
    return method_runs(cfg) + baseline_runs(cfg)


def run_config(cfg: Mapping[str, Any], method: str, name: str) -> dict[str, Any]:
    """The complete settings of one run: ``cfg`` with the run's head, way, shot, S, lambdas
    and training seed filled in (the evaluation seed stays shared)."""
    _check(cfg)
    key = paths.parse_run_name(name)
    out = copy.deepcopy(dict(cfg))
    if method == method_name(cfg):
        head, subspace_dim = method, cfg["model"]["subspace_dim"]
    elif method in cfg["grid"]["baselines"]:
        b = baseline_settings(cfg, method)
        head, subspace_dim = b["head"], b["subspace_dim"]
    else:
        raise ValueError(f"unknown method {method!r}; the grid has "
                         f"{', '.join([method_name(cfg), *baseline_names(cfg)])}")
    out["model"] = {**out["model"], "head": head, "n_subspaces": key.n_subspaces,
                    "subspace_dim": subspace_dim}
    out["train"] = {**out["train"], "way": key.way, "shot": key.shot, "lambda1": key.lambda1,
                    "lambda2": key.lambda2, "seed": key.seed}
    return out


def result_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sections that determine results (everything but :data:`RUNTIME_SECTIONS`)."""
    return {k: v for k, v in cfg.items() if k not in RUNTIME_SECTIONS}


#: result sections no training run reads: which runs exist (adding a grid value must not
#: re-run the existing cells) and the explain step (it only reads trained models)
NOT_READ_BY_RUNS = ("grid", "explain")


def training_settings(run_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a training run's result depends on, given its full settings: the result settings
    but :data:`NOT_READ_BY_RUNS`, and ``pretrain`` only when it starts from the pretrain
    stage's backbone (``train.init: pretrained``)."""
    pretrained = run_cfg.get("train", {}).get("init") == "pretrained"
    skipped = NOT_READ_BY_RUNS + (() if pretrained else ("pretrain",))
    return {k: v for k, v in result_settings(run_cfg).items() if k not in skipped}


def run_settings(cfg: Mapping[str, Any], method: str, name: str) -> dict[str, Any]:
    """What one run's result depends on: :func:`training_settings` of :func:`run_config`."""
    return training_settings(run_config(cfg, method, name))


def runtime_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k in RUNTIME_SECTIONS}

