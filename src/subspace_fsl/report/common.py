"""What tables and plots share: how the results are described (split, protocol), each
cell's episodes and summary, and the labels of settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from subspace_fsl import grid, paths, stats
from subspace_fsl.readers import read_json
from subspace_fsl.results import (
    CONFIG_COLUMNS,
)

# --- descriptions ------------------------------------------------------------------------


def split_description(cfg: Mapping[str, Any]) -> str:
    """"class split: random (seed 0), 100 base / 50 val / 50 novel classes" from the split
    file the runs used (the configuration's ``split`` section if there is none yet)."""
    path = paths.split_path(cfg)
    if path.is_file():
        split = read_json(path, "make it again with `subspace-fsl split`")
        rule, seed = split["rule"], split.get("seed")
        counts = [len(split[k]) for k in ("base", "val", "novel")]
    else:
        rule, seed = cfg["split"]["rule"], cfg["split"]["seed"]
        counts = list(cfg["split"]["counts"])
    seed_text = f" (seed {seed})" if rule == "random" else ""
    return (f"class split {rule}{seed_text}: {counts[0]:g} base / {counts[1]:g} validation / "
            f"{counts[2]:g} novel classes")


def protocol_description(cfg: Mapping[str, Any], results: pd.DataFrame | None = None) -> str:
    ev = cfg["eval"]
    n = int(results["episode"].nunique()) if results is not None else ev["episodes"]
    return (f"{n} test episodes per cell, {ev['query']} queries per class, one episode seed "
            f"({ev['seed']}) for every model; accuracy in % as mean +- 95% CI "
            f"(1.96 s / sqrt(episodes))")


# --- summaries -------------------------------------------------------------------------------


def paired_episodes(rows: pd.DataFrame) -> pd.Series:
    """Per-episode accuracy (a fraction) averaged over training seeds, indexed by episode."""
    return rows.groupby("episode")["accuracy"].mean().sort_index()


def aligned_episodes(a: pd.Series, b: pd.Series,
                     names: str) -> tuple[np.ndarray, np.ndarray]:
    """Two models' per-episode accuracies, in episode order; ``names`` says which two in the
    error raised when they were not evaluated on the same episodes."""
    common = a.index.intersection(b.index)
    if len(common) != len(a) or len(common) != len(b):
        raise ValueError(f"not evaluated on the same episodes: {names}")
    return a.loc[common].to_numpy(), b.loc[common].to_numpy()


def summarise(rows: pd.DataFrame) -> dict[str, float]:
    """Mean +- CI (in %) over episodes of one model configuration, and the seed spread."""
    if rows.empty:
        return {"mean": math.nan, "ci95": math.nan, "seed_sd": math.nan, "n_episodes": 0,
                "n_seeds": 0}
    mean, half = stats.mean_ci(paired_episodes(rows).to_numpy())
    seed_means = rows.groupby("seed")["accuracy"].mean().to_numpy()
    return {"mean": 100 * mean, "ci95": 100 * half,
            "seed_sd": 100 * stats.seed_spread(seed_means),
            "n_episodes": int(rows["episode"].nunique()), "n_seeds": len(seed_means)}


def cell_rows(results: pd.DataFrame, method: str, split: str, way: int, shot: int,
              n_subspaces: int | None = None, lambda1: float | None = None,
              lambda2: float | None = None, eval_shot: int | None = None,
              **settings: Any) -> pd.DataFrame:
    """The rows of one method trained at (way, shot) and evaluated at ``eval_shot`` (None:
    the training shot) whose settings (``CONFIG_COLUMNS``; None = any) match: floats by
    ``np.isclose``, the others exactly."""
    unknown = set(settings) - set(CONFIG_COLUMNS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {CONFIG_COLUMNS}")
    mask = ((results["method"] == method) & (results["split"] == split)
            & (results["way"] == way) & (results["shot"] == shot))
    if "eval_shot" in results.columns:
        mask &= results["eval_shot"] == (shot if eval_shot is None else eval_shot)
    wanted = {"n_subspaces": n_subspaces, "lambda1": lambda1, "lambda2": lambda2, **settings}
    for column, value in wanted.items():
        if value is None:
            continue
        if column in ("lambda1", "lambda2", "tau"):
            mask &= np.isclose(results[column].astype(float), float(value))
        else:
            mask &= results[column] == value
    return results[mask]


def config_of(row: Mapping[str, Any] | pd.Series) -> dict[str, Any]:
    """The ``CONFIG_COLUMNS`` of a selection row, with plain Python types."""
    return {"n_subspaces": int(row["n_subspaces"]), "lambda1": float(row["lambda1"]),
            "lambda2": float(row["lambda2"]), "tau": float(row["tau"]),
            "learn_tau": bool(row["learn_tau"]), "distance": str(row["distance"]),
            "embed": str(row["embed"]), "augment": str(row["augment"])}


def tau_text(tau: float, learn_tau: bool) -> str:
    """"τ=10", "τ learned (from 10)"."""
    value = paths.format_number(tau)
    return f"τ learned (from {value})" if learn_tau else f"τ={value}"


def settings_text(cfg: Mapping[str, Any], method: str, config: Mapping[str, Any],
                  budget: int | None = None, with_s: bool = True) -> str:
    """What a method was run with: the grid's method "S=4, λ1=0.1, λ2=0, τ=1"; a baseline
    the settings its grid searched, "τ=10, euclidean distance"; the batch-norm passes and
    the augmentation policy ("flip augmentation") where searched or not the default, a
    flipped support where set; then "(best of 8 on validation)" with the selection budget."""
    if method == grid.method_name(cfg):
        parts = [f"S={int(config['n_subspaces'])}"] if with_s else []
        parts += [f"λ1={paths.format_number(config['lambda1'])}",
                  f"λ2={paths.format_number(config['lambda2'])}",
                  tau_text(config["tau"], bool(config["learn_tau"]))]
        embeds, augments = cfg["grid"]["embed"], grid.method_augments(cfg)
    else:
        searched = grid.baseline_settings(cfg, method)
        parts = [tau_text(config["tau"], bool(config["learn_tau"]))]
        if len(searched["distance"]) > 1 or config["distance"] != "squared":
            parts.append(f"{config['distance']} distance")
        embeds, augments = searched["embed"], searched["augment"]
        if searched["flip_support"] != "never":
            parts.append({"one_shot": "1-shot support + flips",
                          "always": "support + flips"}[searched["flip_support"]])
    if len(embeds) > 1 or config["embed"] != "joint":
        parts.append(f"{config['embed']} passes")
    if len(augments) > 1 or config["augment"] != paths.DEFAULT_AUGMENT:
        parts.append(f"{config['augment']} augmentation")
    text = ", ".join(parts)
    return text if budget is None else f"{text} (best of {int(budget)} on validation)"


def format_cell(summary: Mapping[str, float], latex: bool = False) -> str:
    if summary["n_episodes"] == 0 or math.isnan(summary["mean"]):
        return "n/a"
    pm = r" \pm " if latex else " ± "
    text = f"{summary['mean']:.2f}{pm}{summary['ci95']:.2f}"
    if latex:
        text = f"${text}$"
    if not math.isnan(summary["seed_sd"]):
        text += f" (sd {summary['seed_sd']:.2f})"
    return text


def way_shot_label(way: int, shot: int) -> str:
    return f"{way}-way {shot}-shot"


def way_shots(cfg: Mapping[str, Any]) -> list[tuple[int, int]]:
    return [(w, k) for w in cfg["grid"]["way"] for k in cfg["grid"]["shot"]]


def eval_cells(cfg: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(way, training shot, evaluation shot) of every novel-class column: each trained
    (way, shot) at each of its ``eval.shots`` (``paths.eval_shots``)."""
    return [(w, k, e) for w, k in way_shots(cfg) for e in paths.eval_shots(cfg, "novel", k)]


def eval_label(way: int, shot: int, eval_shot: int) -> str:
    """``5-way 1-shot``, or ``5-way 1-shot (trained 5-shot)`` when the shots differ."""
    label = way_shot_label(way, eval_shot)
    return label if eval_shot == shot else f"{label} (trained {shot}-shot)"

