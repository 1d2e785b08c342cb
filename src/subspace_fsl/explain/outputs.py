"""What the explain step writes, known from the grid alone (no torch: the workflow's DAG
reads it when Snakemake parses the Snakefile)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from subspace_fsl import paths

PLOT_KINDS = ("examples", "profile", "rv")


def explain_dir(cfg: Mapping[str, Any]) -> Path:
    return paths.results_dir(cfg) / "explain" / paths.dataset_name(cfg)


def way_shots(cfg: Mapping[str, Any]) -> list[tuple[int, int]]:
    return [(w, k) for w in cfg["grid"]["way"] for k in cfg["grid"]["shot"]]


def output_files(cfg: Mapping[str, Any]) -> list[Path]:
    """Every file the step writes (known from the grid alone, for the workflow)."""
    out = explain_dir(cfg)
    files = [out / n for n in ("episodes.csv", "explain.csv", "explain.md", "paired.csv",
                               "paired.md", "profiles.csv")]
    files += [out / f"{kind}_w{w}_k{k}.png" for w, k in way_shots(cfg) for kind in PLOT_KINDS]
    return [*files, out / "done.json"]
