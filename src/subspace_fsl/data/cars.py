"""Stanford Cars (196 classes): the devkit layout when present, else a folder of class folders.

Devkit layout (``cars_train.tgz`` + ``car_devkit.tgz``): ``cars_train/<fname>.jpg``,
``devkit/cars_meta.mat`` (``class_names``, class ``k`` at position ``k``, 1-based) and
``devkit/cars_train_annos.mat`` (``annotations``: ``bbox_x1, bbox_y1, bbox_x2, bbox_y2,
class, fname``). Classes are named like the class folders of the other layout,
``NNN.Make_Model_Year`` (NNN = the devkit's class id; spaces -> ``_``, ``/`` -> ``-``), so one
set of class lists (``config/splits/cars_dn4_*.txt``) fits both. The official archives are no
longer served: point ``dataset.root`` at an extracted copy or ``dataset.url`` at a copy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from subspace_fsl.data.folder import read_folder
from subspace_fsl.data.matfile import integers, load_mat, strings
from subspace_fsl.data.records import DatasetError, make_records

ANNOTATIONS = ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat")
CLASS_FOLDER = re.compile(r"^\d{3}\.")


def is_devkit_root(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return (path / "devkit" / "cars_meta.mat").is_file() and (path / "cars_train").is_dir()


def is_dataset_root(path: str | os.PathLike[str]) -> bool:
    """The devkit layout, or a folder whose entries are all ``NNN.<name>`` class folders."""
    path = Path(path)
    if is_devkit_root(path):
        return True
    if not path.is_dir():
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.is_dir() and CLASS_FOLDER.match(p.name) for p in entries)


def class_name(number: int, devkit_name: str) -> str:
    """``NNN.Make_Model_Year``: the class-folder name of devkit class ``number``."""
    return f"{number:03d}." + devkit_name.strip().replace(" ", "_").replace("/", "-")


def read_cars(root: str | os.PathLike[str], crop_to_bbox: bool = False) -> pd.DataFrame:
    """The reader table (``records.COLUMNS``) of the train images (devkit) or class folders."""
    root = Path(root).resolve()
    if not is_devkit_root(root):
        if crop_to_bbox:
            raise DatasetError(
                f"dataset.crop_to_bbox: {root} is a folder of class folders, which has no "
                "bounding boxes (the devkit layout has)"
            )
        return read_folder(root)
    meta = root / "devkit" / "cars_meta.mat"
    names = [class_name(i, n) for i, n in enumerate(strings(
        load_mat(meta, "class_names")["class_names"]), 1)]
    annos_path = root / "devkit" / "cars_train_annos.mat"
    annos = np.atleast_1d(load_mat(annos_path, "annotations")["annotations"])
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    absent = [f for f in fields if annos.dtype.names is None or f not in annos.dtype.names]
    if absent:
        raise DatasetError(f"{annos_path}: annotations have no field {absent[0]!r}")
    classes = integers(annos["class"], annos_path, "class")
    outside = np.flatnonzero((classes < 1) | (classes > len(names)))
    if len(outside):
        raise DatasetError(
            f"{annos_path}: class {classes[outside[0]]} is not in {meta} ({len(names)} classes)"
        )
    files = strings(annos["fname"])
    if len(set(files)) != len(files):
        raise DatasetError(f"{annos_path}: an image is listed twice")
    boxes = None
    if crop_to_bbox:
        corners = np.column_stack(
            [integers(annos[f], annos_path, f) for f in fields[:4]]
        ).astype(np.float64)
        boxes = np.column_stack([corners[:, :2], corners[:, 2:] - corners[:, :2]])
    order = np.argsort(files, kind="stable")
    return make_records(
        [str(root / "cars_train" / files[i]) for i in order],
        classes[order] - 1,
        names,
        None if boxes is None else boxes[order],
        listed_in=annos_path,
    )
