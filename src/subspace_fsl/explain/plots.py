"""Figures and Markdown tables of the explain step (matplotlib, Agg backend).

Heat maps: each subspace's evidence map (H x W cells of the last feature map) is drawn over
the image with bilinear interpolation, on one symmetric colour scale per query so that the
subspaces of a query compare (red: evidence for the predicted class, blue: for the runner-up).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from subspace_fsl.config import atomic_open

# the ImageNet normalisation is applied on the fly; the cache holds uint8 pixels
CMAP = "RdBu_r"


def _figure(rows: int, cols: int, size: float = 1.9) -> tuple[Any, np.ndarray]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def draw_maps(axes: Sequence[Any], image: np.ndarray, maps: np.ndarray,
              parts_xy: np.ndarray | None = None, visible: np.ndarray | None = None) -> None:
    """axes[0]: the image (uint8 [3, H, W]); axes[1 + s]: map s [h, w] over the image."""
    picture = np.asarray(image).transpose(1, 2, 0)
    size = picture.shape[0]
    axes[0].imshow(picture)
    scale = float(np.abs(maps).max()) or 1.0
    for s, ax in enumerate(axes[1:]):
        ax.imshow(picture)
        ax.imshow(maps[s], cmap=CMAP, vmin=-scale, vmax=scale, alpha=0.55,
                  interpolation="bilinear", extent=(0, size, size, 0))
        if parts_xy is not None and visible is not None:
            ax.scatter(parts_xy[visible, 0], parts_xy[visible, 1], s=6, c="k", marker="x",
                       linewidths=0.6)
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)


def save_query_figure(image: np.ndarray, maps: np.ndarray, title: str, path: Path,
                      labels: Sequence[str] | None = None) -> Path:
    """One query: the image and its S maps side by side (``predict --explain``)."""
    s = maps.shape[0]
    fig, axes = _figure(1, s + 1, 2.2)
    draw_maps(axes[0], image, maps)
    axes[0, 0].set_title(title, fontsize=7)
    for i in range(s):
        axes[0, i + 1].set_title(labels[i] if labels else f"subspace {i + 1}", fontsize=7)
    return _save(fig, path)


def _placeholder(path: Path, text: str) -> Path:
    fig, axes = _figure(1, 1, 3.0)
    axes[0, 0].text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True)
    axes[0, 0].axis("off")
    return _save(fig, path)


def save_examples(example: Mapping[str, Any] | None, data: Any, parts: Any,
                  cfg: Mapping[str, Any], path: Path) -> Path:
    """A grid: one row per example query (image + one evidence map per subspace)."""
    if not example:
        return _placeholder(path, "no selected model for this (way, shot)")
    count = min(int(cfg["explain"]["examples"]), len(example["indices"]))
    # spread the examples over the episode's classes (queries are grouped by class)
    picks = np.linspace(0, len(example["indices"]) - 1, count).round().astype(int)
    evidence = example["evidence"]
    s = evidence.shape[1]
    fig, axes = _figure(count, s + 1)
    names = data.cache.class_names
    for row, q in enumerate(picks):
        index = int(example["indices"][q])
        draw_maps(axes[row], data.cache.images[index], evidence[q],
                  *((parts.xy[index], parts.visible[index]) if parts is not None else ()))
        truth = names[int(example["classes"][example["labels"][q]])]
        guess = names[int(example["classes"][example["predicted"][q]])]
        mark = "ok" if truth == guess else "wrong"
        axes[row, 0].set_title(f"{_short(truth)} ({mark})", fontsize=6)
        for i in range(s):
            axes[row, i + 1].set_title(f"subspace {i + 1}", fontsize=6)
    caption = "" if parts is not None else " (no part annotations in this data set)"
    fig.suptitle(f"{example['method']} {example['run']}: evidence predicted vs runner-up"
                 f"{caption}", fontsize=7)
    return _save(fig, path)


def _short(name: str, width: int = 28) -> str:
    name = name.split(".", 1)[-1]
    return name if len(name) <= width else name[: width - 1] + "…"


def save_profile(example: Mapping[str, Any] | None, part_names: Sequence[str] | None,
                 path: Path) -> Path:
    """Heat map subspaces x parts of the part profile (mean over episodes); a labelled
    placeholder where the data set has no part annotations (``part_names`` None)."""
    if not example:
        return _placeholder(path, "no selected model for this (way, shot)")
    if part_names is None or example.get("profile") is None:
        return _placeholder(path, "no part annotations in this data set: no part profile")
    import matplotlib.pyplot as plt

    profile = np.asarray(example["profile"])
    fig, ax = plt.subplots(figsize=(0.55 * len(part_names) + 1.5, 0.45 * len(profile) + 1.2))
    image = ax.imshow(profile, cmap="viridis", vmin=0, aspect="auto")
    ax.set_xticks(range(len(part_names)), part_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(profile)), [f"s{i + 1}" for i in range(len(profile))], fontsize=7)
    for (i, j), value in np.ndenumerate(profile):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=ax, fraction=0.05)
    ax.set_title(f"part profile: {example['run']}", fontsize=7)
    return _save(fig, path)


def save_rv(example: Mapping[str, Any] | None, path: Path) -> Path:
    """The subspace x subspace RV matrix (mean over episodes)."""
    if not example:
        return _placeholder(path, "no selected model for this (way, shot)")
    import matplotlib.pyplot as plt

    rv = np.asarray(example["rv"])
    fig, ax = plt.subplots(figsize=(0.5 * len(rv) + 1.8, 0.5 * len(rv) + 1.2))
    image = ax.imshow(rv, cmap="magma", vmin=0, vmax=1)
    labels = [f"s{i + 1}" for i in range(len(rv))]
    ax.set_xticks(range(len(rv)), labels, fontsize=7)
    ax.set_yticks(range(len(rv)), labels, fontsize=7)
    for (i, j), value in np.ndenumerate(rv):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                color="k" if value > 0.5 else "w")
    fig.colorbar(image, ax=ax, fraction=0.05)
    ax.set_title(f"RV matrix: {example['run']}", fontsize=7)
    return _save(fig, path)


def _cell(mean: float, ci: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f}"


def summary_markdown(summary: pd.DataFrame, note: str | None = None) -> str:
    """explain.csv as a Markdown table (mean ± 95% CI over episodes), ``note`` above it."""
    lines = [note, ""] if note else []
    lines += ["| method | run | accuracy | specialization | diversity (JSD) | mean RV "
              "| mean principal angle (°) | maps |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(
            f"| {r.method} | {r.run} | {_cell(r.accuracy, r.accuracy_ci95)} "
            f"| {_cell(r.specialization, r.specialization_ci95)} "
            f"| {_cell(r.diversity, r.diversity_ci95)} | {_cell(r.mean_rv, r.mean_rv_ci95)} "
            f"| {_cell(r.mean_angle, r.mean_angle_ci95, 1)} "
            f"| {'exact' if r.exact_maps else 'gradient x activation'} |")
    return "\n".join(lines) + "\n"


def paired_markdown(paired: pd.DataFrame, note: str | None = None) -> str:
    """paired.csv as Markdown: lambda1 > 0 minus lambda1 = 0, per-episode paired tests."""
    lines = [note, ""] if note else []
    lines += ["| way | shot | S | λ2 | seed | λ1 | episodes | Δ specialization (95% CI) "
              "| p (Wilcoxon) | Δ diversity (95% CI) | p (Wilcoxon) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in paired.to_dict("records"):
        cells = []
        for name in ("specialization", "diversity"):
            if f"{name}_diff" in r and math.isfinite(r[f"{name}_diff"]):
                cells += [f"{r[f'{name}_diff']:+.4f} ± {r[f'{name}_ci95']:.4f}",
                          f"{r[f'{name}_p_wilcoxon']:.3g}"]
            else:
                cells += ["–", "–"]
        lines.append(f"| {r['way']} | {r['shot']} | {r['n_subspaces']} | {r['lambda2']:g} "
                     f"| {r['seed']} | {r['lambda1']:g} | {r['episodes']} | "
                     + " | ".join(cells) + " |")
    if paired.empty:
        lines.append("| (no grid cell has both λ1 = 0 and λ1 > 0 at S > 1) |" + " |" * 10)
    return "\n".join(lines) + "\n"
