"""Part locations of every cached image as arrays: xy [n, K, 2] and visible [n, K].

The cache's ``parts.csv`` (``data.cache.write_cache_parts``) holds the locations in cached-image
pixels, already moved through the same bbox crop / resize / centre crop as the pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subspace_fsl.data.cache import PARTS_FILE, read_cache_parts


@dataclass(frozen=True)
class PartLocations:
    """``names`` [K] (by part id), ``xy`` [n, K, 2] (x, y pixels), ``visible`` [n, K] bool."""

    names: list[str]
    xy: np.ndarray
    visible: np.ndarray


def has_part_files(root: str | os.PathLike[str]) -> bool:
    """Whether the data root holds CUB's part annotations (``parts/part_locs.txt``)."""
    return (Path(root) / "parts" / "part_locs.txt").is_file()


def load_part_locations(cache_dir: str | os.PathLike[str], n_images: int,
                        data_root: str | os.PathLike[str] | None = None
                        ) -> PartLocations | None:
    """The part table of a cache of ``n_images`` images; a part not annotated for an image is
    invisible there. ``None`` for a cache without ``parts.csv`` (a data set without part
    annotations: Cars, Aircraft, a CUB snapshot without ``parts/``, a folder of images): the
    explain step then draws the evidence maps and leaves the part measures out. When the
    cache's ``data_root`` does have ``parts/part_locs.txt``, the cache was built before parts
    were cached: a ``ValueError`` naming the file (never a silent run without parts)."""
    table = read_cache_parts(cache_dir)
    if table is None:
        if data_root is not None and has_part_files(data_root):
            raise ValueError(
                f"{os.path.join(cache_dir, PARTS_FILE)} is missing but {data_root} has part "
                "annotations (parts/part_locs.txt): the cache was built before they were "
                f"cached; delete {cache_dir} and run `subspace-fsl prepare` again")
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
