"""The benchmark's seaborn plots (``PLOT_NAMES``) as PNG and PDF:
``accuracy_vs_subspaces``, ``lambda_heatmaps``, ``training_curves``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from subspace_fsl import grid, paths, stats
from subspace_fsl.report.common import (
    cell_rows,
    config_of,
    split_description,
    summarise,
    way_shot_label,
    way_shots,
)
from subspace_fsl.results import (
    CONFIG_COLUMNS,
    at_training_shot,
    load_histories,
    load_results,
)
from subspace_fsl.selection import chosen, read_selection

PLOT_NAMES = ("accuracy_vs_subspaces", "lambda_heatmaps", "training_curves")
PLOT_FORMATS = ("png", "pdf")


# --- plots -----------------------------------------------------------------------------------


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in PLOT_FORMATS:
        path = out / f"{name}.{ext}"
        tmp = out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=ext)
        tmp.replace(path)
        written.append(path)
    plt.close(fig)
    return written


def _selected_rows(results: pd.DataFrame, selection: pd.DataFrame, method: str,
                   split: str) -> pd.DataFrame:
    """``method``'s rows at its chosen settings for every (way, shot, S) of the selection."""
    on = ["way", "shot", *CONFIG_COLUMNS]
    key = selection[selection["method"] == method][on]
    rows = results[(results["method"] == method) & (results["split"] == split)]
    return rows.merge(key, on=on)


def plot_accuracy_vs_subspaces(cfg: Mapping[str, Any], results: pd.DataFrame,
                               selection: pd.DataFrame) -> Any:
    """Novel accuracy against S (lambdas and tau chosen on validation), one panel per (way,
    shot), 95% CI bars; baselines (at their chosen settings) as dashed horizontal lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    method = grid.method_name(cfg)
    rows = _selected_rows(results, selection, method, "novel")
    per_episode = (rows.groupby(["way", "shot", "n_subspaces", "episode"], as_index=False)
                   ["accuracy"].mean())
    per_episode["accuracy"] *= 100
    cells = way_shots(cfg)
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.4), squeeze=False)
    palette = sns.color_palette("deep", n_colors=len(grid.baseline_names(cfg)) + 1)
    for ax, (way, shot) in zip(axes[0], cells, strict=True):
        data = per_episode[(per_episode["way"] == way) & (per_episode["shot"] == shot)]
        sns.lineplot(data=data, x="n_subspaces", y="accuracy", marker="o", ax=ax,
                     errorbar=("se", stats.Z95), err_style="bars", color=palette[0],
                     label=method)
        for color, name in zip(palette[1:], grid.baseline_names(cfg), strict=True):
            config = config_of(chosen(selection, name, way, shot))
            base = summarise(cell_rows(results, name, "novel", way, shot, **config))
            ax.axhline(base["mean"], ls="--", color=color, label=name)
            ax.axhspan(base["mean"] - base["ci95"], base["mean"] + base["ci95"], color=color,
                       alpha=0.12, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg["grid"]["n_subspaces"], [str(s) for s in cfg["grid"]["n_subspaces"]])
        ax.set(title=way_shot_label(way, shot), xlabel="feature subspaces S",
               ylabel="novel accuracy (%)")
        ax.legend(fontsize="small")
    fig.suptitle(f"{split_description(cfg)}; λ chosen on validation", fontsize="small")
    return fig


def plot_lambda_heatmaps(cfg: Mapping[str, Any], results: pd.DataFrame,
                         selection: pd.DataFrame) -> Any:
    """Validation and novel accuracy over lambda1 x lambda2, one row per (way, shot, S), at
    the tau chosen on validation for that S."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    method = grid.method_name(cfg)
    at_tau = ["way", "shot", "n_subspaces", "tau", "learn_tau"]
    rows = results[results["method"] == method].merge(
        selection[selection["method"] == method][at_tau], on=at_tau)
    means = (rows.groupby(["split", "way", "shot", "n_subspaces", "lambda1", "lambda2"],
                          as_index=False)["accuracy"].mean())
    means["accuracy"] *= 100
    cells = [(w, k, s) for w, k in way_shots(cfg) for s in cfg["grid"]["n_subspaces"]]
    sns.set_theme(style="white", context="paper")
    fig, axes = plt.subplots(len(cells), 2, figsize=(8.5, 2.6 * len(cells) + 0.6),
                             squeeze=False, layout="constrained")
    for (way, shot, s), pair in zip(cells, axes, strict=True):
        for ax, split in zip(pair, paths.SPLITS, strict=True):
            data = means[(means["split"] == split) & (means["way"] == way)
                         & (means["shot"] == shot) & (means["n_subspaces"] == s)]
            grid_ = data.pivot(index="lambda1", columns="lambda2", values="accuracy")
            grid_.index = [paths.format_number(v) for v in grid_.index]
            grid_.columns = [paths.format_number(v) for v in grid_.columns]
            sns.heatmap(grid_, annot=True, fmt=".1f", cmap="viridis", ax=ax,
                        cbar_kws={"label": "accuracy (%)"})
            name = "validation" if split == "val" else "novel"
            ax.set(title=f"{way_shot_label(way, shot)}, S={s}: {name}", xlabel="λ2",
                   ylabel="λ1")
    fig.suptitle(f"{method}; {split_description(cfg)}", fontsize="small")
    return fig


def plot_training_curves(cfg: Mapping[str, Any], histories: pd.DataFrame,
                         selection: pd.DataFrame) -> Any:
    """Validation accuracy over training episodes: the method's chosen cell at every S and
    the baselines at their chosen settings, one panel per (way, shot); several seeds are
    averaged (band = 95% CI)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    method = grid.method_name(cfg)
    on = ["method", "way", "shot", *CONFIG_COLUMNS]
    ours = histories.merge(selection[selection["method"] == method][on], on=on).assign(
        model=lambda d: method + " S=" + d["n_subspaces"].astype(str))
    others = histories.merge(selection[(selection["method"] != method)
                                       & selection["best_s"]][on], on=on
                             ).assign(model=lambda d: d["method"])
    data = pd.concat([ours, others], ignore_index=True)
    data["val_acc"] = 100 * data["val_acc"]
    cells = way_shots(cfg)
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(cells), figsize=(4.6 * len(cells), 3.4), squeeze=False)
    for ax, (way, shot) in zip(axes[0], cells, strict=True):
        here = data[(data["way"] == way) & (data["shot"] == shot)]
        sns.lineplot(data=here, x="episode", y="val_acc", hue="model", ax=ax,
                     errorbar=("ci", 95) if here["seed"].nunique() > 1 else None)
        ax.set(title=way_shot_label(way, shot), xlabel="training episode",
               ylabel="validation accuracy (%)")
        ax.legend(fontsize="x-small")
    fig.suptitle("validation accuracy during training (settings chosen on validation)",
                 fontsize="small")
    return fig


def write_plots(cfg: Mapping[str, Any], out_dir: str | Path | None = None) -> list[Path]:
    """Every plot of ``PLOT_NAMES`` as PNG and PDF, into ``paths.plots_dir(cfg)``."""
    import matplotlib

    matplotlib.use("Agg")
    results = at_training_shot(load_results(cfg))  # the plots are at the training shot
    selection = read_selection(paths.selection_path(cfg))
    histories = load_histories(cfg)
    out = Path(out_dir) if out_dir is not None else paths.plots_dir(cfg)
    written = []
    written += _save(plot_accuracy_vs_subspaces(cfg, results, selection), out,
                     "accuracy_vs_subspaces")
    written += _save(plot_lambda_heatmaps(cfg, results, selection), out, "lambda_heatmaps")
    written += _save(plot_training_curves(cfg, histories, selection), out, "training_curves")
    return written
