"""The benchmark grid: which runs exist, and the full settings of each one.

A run is a ``(method, run name)`` pair. The method is ``model.head`` (the patent's method,
``multisubspace`` by default) trained at every ``way x shot x n_subspaces x lambda1 x lambda2 x
tau x seed`` cell of the ``grid`` section, or a baseline from ``grid.baselines`` (its own head,
S and lambdas) trained at every ``way x shot x tau x distance x seed`` cell of its own
``grid`` (``grid.baselines.<name>.grid.tau`` / ``.distance``). Every method thus gets a
validation grid over the settings that matter to it, and :func:`budget` counts it. Every run
of a data set uses the same episode seeds, so all models see identical training and
evaluation episodes.

A temperature grid value is a number (fixed tau), ``"learn"`` (tau learned from 1) or
``"learn:<tau0>"`` (learned from tau0); see :func:`tau_setting`.
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
    taus = {"grid.tau": cfg["grid"]["tau"]}
    for name, entry in cfg["grid"]["baselines"].items():
        if "tau" in (entry.get("grid") or {}):
            taus[f"grid.baselines.{name}.grid.tau"] = entry["grid"]["tau"]
    for key, values in taus.items():
        settings = [tau_setting(v) for v in values]
        if len(set(settings)) != len(settings):
            raise ValueError(f"{key}={list(values)!r} names one temperature twice")


def tau_setting(value: float | str) -> tuple[float, bool]:
    """A temperature grid value -> ``(tau, learn_tau)``: ``10 -> (10.0, False)``,
    ``"learn" -> (1.0, True)``, ``"learn:10" -> (10.0, True)``."""
    if isinstance(value, str):
        head, _, initial = value.partition(":")
        if head != "learn":
            raise ValueError(f"a tau grid value is a number, 'learn' or 'learn:<tau0>'; "
                             f"got {value!r}")
        tau = float(initial) if initial else paths.DEFAULT_TAU
        learn = True
    else:
        tau, learn = float(value), False
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {value!r}")
    return tau, learn


def baseline_settings(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A baseline's head, S and lambdas (what its mapping sets, else the method's settings)
    and its validation grid: ``tau`` (default ``[1]``) and ``distance`` (``["squared"]``)."""
    entry = cfg["grid"]["baselines"][name]
    own = entry.get("grid") or {}
    return {
        "head": entry["head"],
        "n_subspaces": entry.get("n_subspaces", cfg["model"]["n_subspaces"]),
        "subspace_dim": entry.get("subspace_dim", cfg["model"]["subspace_dim"]),
        "lambda1": entry.get("lambda1", cfg["train"]["lambda1"]),
        "lambda2": entry.get("lambda2", cfg["train"]["lambda2"]),
        "flip_support": entry.get("flip_support", cfg["model"].get("flip_support", "never")),
        "tau": list(own.get("tau", [paths.DEFAULT_TAU])),
        "distance": list(own.get("distance", ["squared"])),
        "embed": list(own.get("embed", ["joint"])),
        "augment": list(own.get("augment", [cfg["train"]["augment"]])),
    }


def method_augments(cfg: Mapping[str, Any]) -> list[str]:
    """The method's augmentation policies: ``grid.augment``, else ``[train.augment]``."""
    return list(cfg["grid"].get("augment") or [cfg["train"]["augment"]])


def method_lambda1s(cfg: Mapping[str, Any], n_subspaces: int) -> list[float]:
    """The ``grid.lambda1`` values trained at S = ``n_subspaces``: all of them, but only the
    smallest at S = 1 (0 where the grid has it), where lambda1 (the penalty between
    subspaces, method.md step 4) has no pair of subspaces to act on, so every value trains
    the same model (duplicates by construction, dropped and counted once in :func:`budget`)."""
    values = list(cfg["grid"]["lambda1"])
    return [min(values, key=abs)] if int(n_subspaces) == 1 else values


def dropped_duplicates(cfg: Mapping[str, Any]) -> str | None:
    """One line naming the cells :func:`method_lambda1s` drops, or None when none is."""
    g = cfg["grid"]
    if 1 not in [int(s) for s in g["n_subspaces"]] or len(g["lambda1"]) < 2:
        return None
    kept = method_lambda1s(cfg, 1)[0]
    others = ", ".join(paths.format_number(v) for v in g["lambda1"] if v != kept)
    kept = paths.format_number(kept)
    return (f"grid: S=1 is trained at lambda1={kept} only (lambda1 {others} at S=1 would "
            f"train the same model: lambda1 acts between subspaces)")


def method_runs(cfg: Mapping[str, Any]) -> list[Run]:
    """Every grid cell and seed of the method (the squared distance, grid.tau), S = 1 at one
    lambda1 (:func:`method_lambda1s`)."""
    _check(cfg)
    g = cfg["grid"]
    method = method_name(cfg)
    return [
        Run(method, paths.run_name(w, k, s, l1, l2, seed, *tau_setting(t), "squared", e, a))
        for w, k, s in itertools.product(g["way"], g["shot"], g["n_subspaces"])
        for l1, l2, t, e, a, seed in itertools.product(
            method_lambda1s(cfg, s), g["lambda2"], g["tau"], g["embed"],
            method_augments(cfg), g["seeds"])
    ]


def baseline_runs(cfg: Mapping[str, Any]) -> list[Run]:
    """Every baseline at every (way, shot, tau, distance, seed) of its grid."""
    _check(cfg)
    g = cfg["grid"]
    runs = []
    for name in baseline_names(cfg):
        b = baseline_settings(cfg, name)
        for w, k, t, dist, e, a, seed in itertools.product(
                g["way"], g["shot"], b["tau"], b["distance"], b["embed"], b["augment"],
                g["seeds"]):
            runs.append(Run(name, paths.run_name(w, k, b["n_subspaces"], b["lambda1"],
                                                 b["lambda2"], seed, *tau_setting(t), dist,
                                                 e, a)))
    return runs


def budget(cfg: Mapping[str, Any], method: str) -> int:
    """How many configurations ``method`` compares on validation per (way, shot) (seeds are
    replicates of one configuration, not extra choices)."""
    g = cfg["grid"]
    if method == method_name(cfg):
        return (sum(len(method_lambda1s(cfg, s)) for s in g["n_subspaces"])
                * len(g["lambda2"]) * len(g["tau"]) * len(g["embed"])
                * len(method_augments(cfg)))
    if method in g["baselines"]:
        b = baseline_settings(cfg, method)
        return len(b["tau"]) * len(b["distance"]) * len(b["embed"]) * len(b["augment"])
    raise ValueError(f"unknown method {method!r}; the grid has "
                     f"{', '.join([method_name(cfg), *baseline_names(cfg)])}")


def all_runs(cfg: Mapping[str, Any]) -> list[Run]:
    return method_runs(cfg) + baseline_runs(cfg)


def run_config(cfg: Mapping[str, Any], method: str, name: str) -> dict[str, Any]:
    """The complete settings of one run: ``cfg`` with the run's head, way, shot, S, lambdas,
    temperature (tau, learn_tau), distance, embed, augmentation policy, the baseline's
    flip_support and training seed filled in (the evaluation seed
    stays shared)."""
    _check(cfg)
    key = paths.parse_run_name(name)
    out = copy.deepcopy(dict(cfg))
    if method == method_name(cfg):
        head, subspace_dim = method, cfg["model"]["subspace_dim"]
        flip = cfg["model"].get("flip_support", "never")
    elif method in cfg["grid"]["baselines"]:
        b = baseline_settings(cfg, method)
        head, subspace_dim, flip = b["head"], b["subspace_dim"], b["flip_support"]
    else:
        raise ValueError(f"unknown method {method!r}; the grid has "
                         f"{', '.join([method_name(cfg), *baseline_names(cfg)])}")
    out["model"] = {**out["model"], "head": head, "n_subspaces": key.n_subspaces,
                    "subspace_dim": subspace_dim, "tau": key.tau, "learn_tau": key.learn_tau,
                    "distance": key.distance, "embed": key.embed, "flip_support": flip}
    out["train"] = {**out["train"], "way": key.way, "shot": key.shot, "lambda1": key.lambda1,
                    "lambda2": key.lambda2, "seed": key.seed, "augment": key.augment}
    return out


def result_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sections that determine results (everything but :data:`RUNTIME_SECTIONS`)."""
    return {k: v for k, v in cfg.items() if k not in RUNTIME_SECTIONS}


#: result sections no training run reads: which runs exist (adding a grid value must not
#: re-run the existing cells) and the explain step (it only reads trained models)
NOT_READ_BY_RUNS = ("grid", "explain")

#: the ``eval`` settings a training run reads: its validation episodes have ``eval.query``
#: queries per class, come from the ``eval.seed`` plan and are embedded ``eval.batch_size``
#: images at a time. ``eval.episodes`` and ``eval.shots`` belong to the evaluations alone:
#: changing them re-runs evaluations, never a training.
EVAL_READ_BY_TRAINING = ("query", "seed", "batch_size")


def training_view(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with its ``eval`` section cut to :data:`EVAL_READ_BY_TRAINING`: the settings
    a training run depends on and records as its MLflow params."""
    out = dict(cfg)
    if isinstance(out.get("eval"), Mapping):
        out["eval"] = {k: v for k, v in out["eval"].items() if k in EVAL_READ_BY_TRAINING}
    return out


def evaluation_only(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``eval`` settings no training reads (``eval.episodes``, ``eval.shots``)."""
    return {"eval": {k: v for k, v in cfg.get("eval", {}).items()
                     if k not in EVAL_READ_BY_TRAINING}}


def training_settings(run_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a training run's result depends on, given its full settings: the result settings
    but :data:`NOT_READ_BY_RUNS` and the evaluation-only ``eval`` keys
    (:func:`training_view`), and ``pretrain`` only when it starts from the pretrain stage's
    backbone (``train.init: pretrained``)."""
    pretrained = run_cfg.get("train", {}).get("init") == "pretrained"
    skipped = NOT_READ_BY_RUNS + (() if pretrained else ("pretrain",))
    return training_view(
        {k: v for k, v in result_settings(run_cfg).items() if k not in skipped})


def run_settings(cfg: Mapping[str, Any], method: str, name: str) -> dict[str, Any]:
    """What one run's training depends on: :func:`training_settings` of :func:`run_config`."""
    return training_settings(run_config(cfg, method, name))


def evaluation_settings(cfg: Mapping[str, Any], method: str, name: str) -> dict[str, Any]:
    """What one run's evaluation depends on: its :func:`run_settings` (the model) and
    ``eval.episodes`` (its episode plan); not ``eval.shots``, the list of the other
    evaluations (an evaluation job's shot is its own)."""
    settings = run_settings(cfg, method, name)
    settings["eval"] = {**settings["eval"], "episodes": cfg["eval"]["episodes"]}
    return settings


def runtime_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k in RUNTIME_SECTIONS}



def cell_group_key(run: Run) -> tuple[Any, ...]:
    """What the cells of one group share: everything but lambda1, lambda2 and the temperature
    value (its fixed or learned kind is shared: a learned tau is a parameter, a fixed one a
    buffer, so the stacked heads have one structure)."""
    key = run.key
    return (run.method, *key._replace(lambda1=0.0, lambda2=0.0, tau=0.0))


def cell_groups(cfg: Mapping[str, Any]) -> dict[str, list[Run]]:
    """The grid's runs that are trained together (``train.batch_cells``): groups of two or
    more runs sharing :func:`cell_group_key`, named ``{method}/{first run's name}`` (grid
    order); a run alone in its group is trained by the per-run ``train`` rule."""
    grouped: dict[tuple[Any, ...], list[Run]] = {}
    for run in all_runs(cfg):
        grouped.setdefault(cell_group_key(run), []).append(run)
    return {f"{runs[0].method}/{runs[0].name}": runs for runs in grouped.values()
            if len(runs) > 1}
