"""Oxford Flowers-102, in its published layout.

``jpg/image_00001.jpg`` ... (``102flowers.tgz``) and ``imagelabels.mat`` (``labels``: the
1-based class of image ``k`` at position ``k``). The official files name no classes: class
``k`` is called ``"001"`` ... ``"102"``. ``setid.mat`` (an image-level train/val/test split) is
not needed for class splits and not read. No bounding boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from subspace_fsl.data.matfile import integers, load_mat
from subspace_fsl.data.records import DatasetError, make_records

ANNOTATIONS = ("imagelabels.mat",)


def is_dataset_root(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``jpg/`` and ``imagelabels.mat``."""
    path = Path(path)
    return (path / "jpg").is_dir() and (path / "imagelabels.mat").is_file()


def read_flowers(root: str | os.PathLike[str], crop_to_bbox: bool = False) -> pd.DataFrame:
    """The reader table (``records.COLUMNS``): image ``k`` is ``jpg/image_{k:05d}.jpg``."""
    root = Path(root).resolve()
    if crop_to_bbox:
        raise DatasetError("dataset.crop_to_bbox: source flowers has no bounding boxes")
    path = root / "imagelabels.mat"
    labels = integers(load_mat(path, "labels")["labels"], path, "labels")
    if labels.size == 0 or labels.min() < 1:
        raise DatasetError(f"{path}: labels must be 1-based class numbers")
    n_classes = int(labels.max())
    return make_records(
        [str(root / "jpg" / f"image_{k:05d}.jpg") for k in range(1, len(labels) + 1)],
        labels - 1,
        [f"{k:03d}" for k in range(1, n_classes + 1)],
        listed_in=path,
    )
