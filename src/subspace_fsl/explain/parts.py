"""Part locations of every cached image as arrays: xy [n, K, 2] and visible [n, K].

The cache's ``parts.csv`` (``data.cache.write_cache_parts``) holds the locations in cached-image
pixels, already moved through the same bbox crop / resize / centre crop as the pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from subspace_fsl.data.cache import read_cache_parts


@dataclass(frozen=True)
class PartLocations:
    """``names`` [K] (by part id), ``xy`` [n, K, 2] (x, y pixels), ``visible`` [n, K] bool."""

    names: list[str]
    xy: np.ndarray
    visible: np.ndarray


def load_part_locations(cache_dir: str | os.PathLike[str], n_images: int
                        ) -> PartLocations | None:
    """The part table of a cache of ``n_images`` images; a part not annotated for an image is
    invisible there. ``None`` for a cache without ``parts.csv`` (a data set without part
    annotations: Cars, Aircraft, a CUB snapshot without ``parts/``, a folder of images): the
    explain step then draws the evidence maps and leaves the part measures out."""
    table = read_cache_parts(cache_dir)
    if table is None:
        return None
    ids = sorted(table["part_id"].unique())
    names = [str(table.loc[table["part_id"] == i, "part_name"].iloc[0]) for i in ids]
    column = {part_id: k for k, part_id in enumerate(ids)}
    xy = np.zeros((n_images, len(ids), 2))
    visible = np.zeros((n_images, len(ids)), dtype=bool)
    rows = table["row"].to_numpy(dtype=np.int64)
    cols = table["part_id"].map(column).to_numpy(dtype=np.int64)
    xy[rows, cols] = table[["x", "y"]].to_numpy(dtype=np.float64)
    visible[rows, cols] = table["visible"].to_numpy() == 1
    return PartLocations(names, xy, visible)
