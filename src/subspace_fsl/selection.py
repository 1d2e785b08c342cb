"""Choosing every method's settings on the validation split, by one rule for all.

Only validation accuracy enters a choice (method.md, paragraph 0036): a configuration's
score is the mean over training seeds of its mean validation-episode accuracy. For every
method (the grid's own and each baseline) and every (way, shot):

1. per S: the best of its other settings (lambda1, lambda2, tau / learn_tau, distance);
2. then the best S (``best_s``); a baseline has one S, so step 2 keeps it.

The method chooses lambda1, lambda2 and tau per S, then S; ProtoNet and DSN choose tau and
the distance form. Ties go to the simpler setting, in this order: smaller lambda1, smaller
lambda2, a fixed tau before a learned one, tau closer to 1 (|log tau|, then the smaller),
the squared distance before the plain Euclidean one (the original ProtoNet's form), one joint
backbone pass before separate ones, the augmentation policy closest to the default
``standard`` (standard, then flip, its subset, then none: a tie means validation cannot tell
them apart, and preferring the default keeps a grid that adds policies from changing a choice
the data do not support); and the smaller S. ``budget`` is how many validation
configurations the (way, shot) choice compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from subspace_fsl import grid, paths
from subspace_fsl.config import atomic_write_text
from subspace_fsl.results import CONFIG_COLUMNS, load_results

CELL = ["way", "shot", "n_subspaces"]
LAMBDAS = ["lambda1", "lambda2"]
#: what a method chooses besides S (all of CONFIG_COLUMNS but n_subspaces)
CHOICES = [c for c in CONFIG_COLUMNS if c != "n_subspaces"]
SELECTION_COLUMNS = ["method", "way", "shot", *CONFIG_COLUMNS, "val_accuracy", "n_seeds",
                     "budget", "best_s"]
#: tie order of the distance forms: the original ProtoNet's squared distance is simpler
DISTANCE_RANK = {"squared": 0, "euclidean": 1}
#: tie order of the batch-norm conventions: the one joint pass (the default) first
EMBED_RANK = {"joint": 0, "separate": 1}
#: tie order of the augmentation policies: the default first, then by how much it drops
AUGMENT_RANK = {"standard": 0, "flip": 1, "none": 2}


def cell_scores(results: pd.DataFrame, method: str, split: str = "val") -> pd.DataFrame:
    """Per (way, shot, configuration): the mean over seeds of the per-seed mean accuracy.

    ``results`` is the long per-episode table of :func:`subspace_fsl.results.load_results`
    (columns method, way, shot, n_subspaces, lambda1, lambda2, tau, learn_tau, distance,
    embed, augment, seed, split, episode, accuracy).
    """
    rows = results[(results["method"] == method) & (results["split"] == split)]
    if rows.empty:
        raise ValueError(f"no {split} results for method {method!r}")
    keys = ["way", "shot", *CONFIG_COLUMNS]
    per_seed = rows.groupby([*keys, "seed"], as_index=False)["accuracy"].mean()
    return (per_seed.groupby(keys, as_index=False)
            .agg(accuracy=("accuracy", "mean"), n_seeds=("seed", "nunique")))


def simplicity_order(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` sorted best first within each (way, shot, S), ties to the simpler setting."""
    ranked = scores.assign(
        _learn=scores["learn_tau"].astype(bool).astype(int),
        _tau=np.abs(np.log(scores["tau"].astype(float))),
        _dist=scores["distance"].map(DISTANCE_RANK),
        _embed=scores["embed"].map(EMBED_RANK),
        _augment=scores["augment"].map(AUGMENT_RANK),
    )
    order = [*CELL, "accuracy", *LAMBDAS, "_learn", "_tau", "tau", "_dist", "_embed",
             "_augment"]
    ranked = ranked.sort_values(order, ascending=[True, True, True, False] + [True] * 8)
    return ranked.drop(columns=["_learn", "_tau", "_dist", "_embed", "_augment"])


def select(results: pd.DataFrame, method: str) -> pd.DataFrame:
    """One row per (way, shot, S) of ``method`` with its validation-best other settings;
    ``best_s`` marks, per (way, shot), the S whose chosen row has the best validation
    accuracy (ties: the smaller S); ``budget`` counts the configurations compared."""
    scores = cell_scores(results, method, "val")
    budget = scores.groupby(["way", "shot"])["accuracy"].transform("size")
    chosen = (simplicity_order(scores.assign(budget=budget))
              .groupby(CELL, as_index=False).head(1)
              .rename(columns={"accuracy": "val_accuracy"}))
    best = (chosen.sort_values(["way", "shot", "val_accuracy", "n_subspaces"],
                               ascending=[True, True, False, True])
            .groupby(["way", "shot"]).head(1).index)
    chosen["best_s"] = chosen.index.isin(best)
    chosen["method"] = method
    return chosen.sort_values(CELL).reset_index(drop=True)[SELECTION_COLUMNS]


def select_all(cfg: Mapping[str, Any], results: pd.DataFrame) -> pd.DataFrame:
    """:func:`select` for the grid's method and every baseline, in that order."""
    methods = [grid.method_name(cfg), *grid.baseline_names(cfg)]
    return pd.concat([select(results, m) for m in methods], ignore_index=True)


def chosen(selection: pd.DataFrame, method: str, way: int, shot: int) -> pd.Series:
    """The row a method uses at (way, shot): its best S with that S's chosen settings."""
    rows = selection[(selection["method"] == method) & (selection["way"] == way)
                     & (selection["shot"] == shot) & selection["best_s"]]
    if len(rows) != 1:
        raise ValueError(f"the selection has {len(rows)} chosen rows for {method} at "
                         f"{way}-way {shot}-shot (expected 1)")
    return rows.iloc[0]


def run_name_of(row: Mapping[str, Any] | pd.Series, seed: int, **changes: Any) -> str:
    """The run name of a selection row's settings (``CONFIG_COLUMNS``) at ``seed``, with
    ``changes`` (e.g. another ``lambda1``) applied."""
    settings = {c: row[c] for c in CONFIG_COLUMNS} | changes
    plain = {k: v.item() if hasattr(v, "item") else v for k, v in settings.items()}
    return paths.run_name(int(row["way"]), int(row["shot"]), seed=int(seed), **plain)


def write_selection(selection: pd.DataFrame, path: str | Path) -> Path:
    atomic_write_text(path, selection.to_csv(index=False))
    return Path(path)


def read_selection(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = set(SELECTION_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a selection table (missing {sorted(missing)}); "
                         "re-run `subspace-fsl select`")
    for column in ("best_s", "learn_tau"):
        table[column] = table[column].astype(bool)
    return table


def run_selection(cfg: Mapping[str, Any]) -> Path:
    """Read every validation evaluation of the grid, choose for every method, and write
    ``selection_path``."""
    results = load_results(cfg, splits=("val",))
    selection = select_all(cfg, results).assign(protocol=paths.protocol(cfg))
    return write_selection(selection, paths.selection_path(cfg))
