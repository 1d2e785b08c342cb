"""Choosing lambda1, lambda2 (per way, shot, S) and S (per way, shot) on the validation split.

Only validation accuracy enters a choice (method.md, paragraph 0036): a cell's score is the
mean over training seeds of its mean validation-episode accuracy. Ties go to the simpler
model (smaller lambda1, then smaller lambda2; smaller S).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from subspace_fsl import grid, paths
from subspace_fsl.config import atomic_write_text

CELL = ["way", "shot", "n_subspaces"]
LAMBDAS = ["lambda1", "lambda2"]
SELECTION_COLUMNS = [*CELL, *LAMBDAS, "val_accuracy", "n_seeds", "best_s"]


def cell_scores(results: pd.DataFrame, method: str, split: str = "val") -> pd.DataFrame:
    """Per (way, shot, S, lambda1, lambda2): the mean over seeds of the per-seed mean accuracy.

    ``results`` is the long per-episode table of :func:`subspace_fsl.report.load_results`
    (columns method, way, shot, n_subspaces, lambda1, lambda2, seed, split, episode, accuracy).
    """
    rows = results[(results["method"] == method) & (results["split"] == split)]
    if rows.empty:
        raise ValueError(f"no {split} results for method {method!r}")
    per_seed = rows.groupby([*CELL, *LAMBDAS, "seed"], as_index=False)["accuracy"].mean()
    return (per_seed.groupby([*CELL, *LAMBDAS], as_index=False)
            .agg(accuracy=("accuracy", "mean"), n_seeds=("seed", "nunique")))


def select(results: pd.DataFrame, method: str) -> pd.DataFrame:
    """One row per (way, shot, S) with the validation-best lambdas; ``best_s`` marks, per
    (way, shot), the S whose chosen cell has the best validation accuracy."""
    scores = cell_scores(results, method, "val")
    ordered = scores.sort_values([*CELL, "accuracy", *LAMBDAS],
                                 ascending=[True, True, True, False, True, True])
    chosen = ordered.groupby(CELL, as_index=False).head(1).rename(
        columns={"accuracy": "val_accuracy"})
    best = (chosen.sort_values(["way", "shot", "val_accuracy", "n_subspaces"],
                               ascending=[True, True, False, True])
            .groupby(["way", "shot"]).head(1).index)
    chosen["best_s"] = chosen.index.isin(best)
    return chosen.sort_values(CELL).reset_index(drop=True)[SELECTION_COLUMNS]


def write_selection(selection: pd.DataFrame, path: str | Path) -> Path:
    atomic_write_text(path, selection.to_csv(index=False))
    return Path(path)


def read_selection(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = set(SELECTION_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a selection table (missing {sorted(missing)})")
    table["best_s"] = table["best_s"].astype(bool)
    return table


def run_selection(cfg: Mapping[str, Any]) -> Path:
    """Read every validation evaluation of the grid, choose, and write ``selection_path``."""
    from subspace_fsl.report import load_results

    results = load_results(cfg, splits=("val",))
    return write_selection(select(results, grid.method_name(cfg)), paths.selection_path(cfg))
