"""Stanford Dogs (120 breeds), in its published layout.

``Images/<wnid>-<breed>/<wnid>_<n>.jpg`` (``images.tar``) and the lists of ``lists.tar``:
``file_list.mat`` (``file_list``: paths relative to ``Images/``, ``labels``: 1-based), or
``train_list.mat`` + ``test_list.mat`` together; found in the root or in ``lists/``. Classes are
the folder names (``n02085620-Chihuahua``) in sorted order, which is the order of ``labels``.
No bounding boxes are read (they are in the separate ``annotation.tar``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from subspace_fsl.data.matfile import integers, load_mat, strings
from subspace_fsl.data.records import DatasetError, make_records

ANNOTATIONS = ("file_list.mat", "train_list.mat", "test_list.mat",
               "lists/file_list.mat", "lists/train_list.mat", "lists/test_list.mat")


def is_dataset_root(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``Images/`` and ``file_list.mat`` (in it or in ``lists/``)."""
    path = Path(path)
    return (path / "Images").is_dir() and _lists_folder(path) is not None


def _lists_folder(root: Path) -> Path | None:
    for folder in (root, root / "lists"):
        if (folder / "file_list.mat").is_file() or (folder / "train_list.mat").is_file():
            return folder
    return None


def read_dogs(root: str | os.PathLike[str], crop_to_bbox: bool = False) -> pd.DataFrame:
    """The reader table (``records.COLUMNS``) of every image the list files name."""
    root = Path(root).resolve()
    if crop_to_bbox:
        raise DatasetError("dataset.crop_to_bbox: source dogs reads no bounding boxes")
    folder = _lists_folder(root)
    if folder is None:
        raise DatasetError(f"{root} has no file_list.mat (nor lists/file_list.mat)")
    names = ["file_list.mat"] if (folder / "file_list.mat").is_file() else [
        "train_list.mat", "test_list.mat"]
    files: list[str] = []
    labels: list[int] = []
    for name in names:
        content = load_mat(folder / name, "file_list", "labels")
        listed = strings(content["file_list"])
        numbers = integers(content["labels"], folder / name, "labels")
        if len(listed) != len(numbers):
            raise DatasetError(f"{folder / name}: {len(listed)} files but {len(numbers)} labels")
        files += listed
        labels += numbers.tolist()
    listed_in = folder / names[0]
    if len(set(files)) != len(files):
        raise DatasetError(f"{listed_in}: an image is listed twice")
    classes = sorted({f.split("/")[0] for f in files})
    position = {c: i for i, c in enumerate(classes)}
    class_ids = np.array([position[f.split("/")[0]] for f in files])
    wrong = np.flatnonzero(class_ids + 1 != np.array(labels))
    if len(wrong):
        i = wrong[0]
        raise DatasetError(
            f"{listed_in}: {files[i]} has label {labels[i]} but its folder is class "
            f"{class_ids[i] + 1} of the sorted breed folders"
        )
    order = np.argsort(files, kind="stable")
    return make_records(
        [str(root / "Images" / files[i]) for i in order],
        class_ids[order],
        classes,
        listed_in=listed_in,
    )
