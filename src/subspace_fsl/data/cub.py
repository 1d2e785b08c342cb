"""CUB-200-2011: the list-file parser, its layout test and the part annotations.

``read_cub`` also reads the synthetic data set (``data.synth`` writes CUB's exact layout).
Downloading and unpacking are :mod:`subspace_fsl.data.download`'s (re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from subspace_fsl.data import download as _download
from subspace_fsl.data.download import (  # noqa: F401 (re-exported)
    ChecksumError,
    archive_name,
    download,
    md5sum,
    record_path,
)
from subspace_fsl.data.records import COLUMNS, DatasetError
from subspace_fsl.data.records import read_table as _read_table


def extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a CUB archive safely; the folder holding ``images.txt`` becomes ``dest``."""
    return _download.extract([archive], dest, is_dataset_root, "images.txt")


def read_cub(root: str | os.PathLike[str], crop_to_bbox: bool = False) -> pd.DataFrame:
    """One row per image: ``image_id, path (absolute), class_id (0-based), class_name, x, y, w, h``.

    Reads ``images.txt``, ``classes.txt``, ``image_class_labels.txt`` and, only when
    ``crop_to_bbox``, ``bounding_boxes.txt`` (bbox columns are NaN otherwise). Every listed
    image must exist; every image needs a label (and a box when cropping).
    """
    root = Path(root).resolve()
    images = _read_table(root / "images.txt", ["image_id", "path"])
    classes = _read_table(root / "classes.txt", ["class_id", "class_name"])
    labels = _read_table(root / "image_class_labels.txt", ["image_id", "class_id"])
    if images.empty:
        raise DatasetError(f"{root / 'images.txt'} lists no images")
    classes = classes.sort_values("class_id").reset_index(drop=True)
    unknown = sorted(set(labels["class_id"]) - set(classes["class_id"]))
    if unknown:
        raise DatasetError(
            f"{root / 'image_class_labels.txt'}: class ids {unknown[:5]} are not in classes.txt"
        )
    table = images.merge(labels, on="image_id", how="left", validate="one_to_one")
    unlabelled = table.loc[table["class_id"].isna(), "image_id"]
    if len(unlabelled):
        raise DatasetError(
            f"{root / 'image_class_labels.txt'} has no label for image_id "
            f"{int(unlabelled.iloc[0])} ({len(unlabelled)} images unlabelled)"
        )
    position = {cid: i for i, cid in enumerate(classes["class_id"])}
    table["class_name"] = table["class_id"].map(
        dict(zip(classes["class_id"], classes["class_name"], strict=True))
    )
    table["class_id"] = table["class_id"].map(position).astype(np.int64)
    table["path"] = [str(root / "images" / p) for p in table["path"]]
    missing = [p for p in table["path"] if not os.path.isfile(p)]
    if missing:
        raise DatasetError(
            f"{root / 'images.txt'} lists {len(missing)} missing image file(s), first: {missing[0]}"
        )
    if crop_to_bbox:
        boxes = _read_table(root / "bounding_boxes.txt", ["image_id", "x", "y", "w", "h"])
        table = table.merge(boxes, on="image_id", how="left", validate="one_to_one")
        boxless = table.loc[table["w"].isna(), "image_id"]
        if len(boxless):
            raise DatasetError(
                f"{root / 'bounding_boxes.txt'} has no box for image_id {int(boxless.iloc[0])}"
            )
        bad = table.loc[(table["w"] <= 0) | (table["h"] <= 0), "image_id"]
        if len(bad):
            raise DatasetError(
                f"{root / 'bounding_boxes.txt'}: empty box for image_id {int(bad.iloc[0])}"
            )
    else:
        for column in ("x", "y", "w", "h"):
            table[column] = np.nan
    empty = sorted(set(range(len(classes))) - set(table["class_id"]))
    if empty:
        raise DatasetError(
            f"{root / 'classes.txt'}: class {classes['class_name'][empty[0]]!r} has no images"
        )
    return table[COLUMNS].sort_values("image_id").reset_index(drop=True)


def is_dataset_root(path: str | os.PathLike[str]) -> bool:
    """True for a folder in CUB's layout (already extracted or synthesised)."""
    return (Path(path) / "images.txt").is_file()


# --- part annotations (explain) ----------------------------------------------------------
# Additive: CUB-200-2011 ships parts/parts.txt ("part_id name", 15 parts) and
# parts/part_locs.txt ("image_id part_id x y visible", pixels of the original image); the
# synthetic generator writes the same two files for the parts it draws.

PART_COLUMNS = ["image_id", "part_id", "part_name", "x", "y", "visible"]


def read_parts(root: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The part annotations of a data set in CUB's layout, or None when it has none.

    One row per (image, part): ``image_id, part_id, part_name, x, y, visible`` (0/1), in the
    original image's pixel coordinates. A malformed line or an unknown part id is a
    ``DatasetError`` naming the file.
    """
    folder = Path(root) / "parts"
    names_path, locs_path = folder / "parts.txt", folder / "part_locs.txt"
    if not names_path.is_file() and not locs_path.is_file():
        return None
    names = _read_table(names_path, ["class_id", "part_name"]).rename(
        columns={"class_id": "part_id"}
    )
    locs = _read_part_locs(locs_path)
    unknown = sorted(set(locs["part_id"]) - set(names["part_id"]))
    if unknown:
        raise DatasetError(f"{locs_path}: part ids {unknown[:5]} are not in {names_path}")
    table = locs.merge(names, on="part_id", how="left")
    return table[PART_COLUMNS].sort_values(["image_id", "part_id"]).reset_index(drop=True)


def _read_part_locs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        table = pd.read_csv(
            path, sep=r"\s+", header=None, names=["image_id", "part_id", "x", "y", "visible"],
            dtype={"image_id": np.int64, "part_id": np.int64, "x": np.float64,
                   "y": np.float64, "visible": np.int64},
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: expected lines 'image_id part_id x y visible': {exc}") from exc
    if table.isna().any().any() or not table["visible"].isin([0, 1]).all():
        raise DatasetError(f"{path}: every line needs image_id part_id x y visible (0 or 1)")
    duplicated = table.duplicated(["image_id", "part_id"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise DatasetError(
            f"{path}: image_id {int(row['image_id'])} part_id {int(row['part_id'])} appears twice"
        )
    return table
