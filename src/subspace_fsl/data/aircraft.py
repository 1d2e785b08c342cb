"""FGVC-Aircraft 2013b at the variant level (100 classes), in its published layout.

``fgvc-aircraft-2013b/data/``: ``variants.txt`` (one variant name a line; that order is the
class order), ``images_variant_{train,val,test}.txt`` (``<7-digit image name> <variant>``),
``images_box.txt`` (``<image name> xmin ymin xmax ymax``) and ``images/<image name>.jpg``.
The bounding box is read only with ``crop_to_bbox``; cropping to it is FRN's preprocessing
(``data/init_Aircraft_fewshot.py`` of Tsingularity/FRN: ``crop((xmin, ymin, xmax, ymax))``),
which also cuts off the copyright banner along the bottom of every image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from subspace_fsl.data.records import DatasetError, make_records

LISTS = ("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")
ANNOTATIONS = ("data/variants.txt", *(f"data/{name}" for name in LISTS), "data/images_box.txt")


def is_dataset_root(path: str | os.PathLike[str]) -> bool:
    """True for the ``fgvc-aircraft-2013b`` folder (it holds ``data/variants.txt``)."""
    return (Path(path) / "data" / "variants.txt").is_file()


def _pairs(path: Path) -> list[tuple[str, str]]:
    """``(image name, rest of the line)`` for each non-empty line of a list file."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, _, rest = line.strip().partition(" ")
        if not name.isdigit() or not rest.strip():
            raise DatasetError(f"{path}, line {number}: expected '<image> <value>', got {line!r}")
        pairs.append((name, rest.strip()))
    return pairs


def read_aircraft(root: str | os.PathLike[str], crop_to_bbox: bool = False) -> pd.DataFrame:
    """The reader table (``records.COLUMNS``) of every image in the three variant lists."""
    data = Path(root).resolve() / "data"
    variants_path = data / "variants.txt"
    if not variants_path.is_file():
        raise DatasetError(f"{variants_path} is missing")
    variants = [v.strip() for v in variants_path.read_text(encoding="utf-8").splitlines()]
    variants = [v for v in variants if v]
    position = {v: i for i, v in enumerate(variants)}
    if len(position) != len(variants):
        raise DatasetError(f"{variants_path}: a variant is listed twice")
    labels: dict[str, int] = {}
    for name in LISTS:
        for image, variant in _pairs(data / name):
            if variant not in position:
                raise DatasetError(f"{data / name}: variant {variant!r} is not in variants.txt")
            if image in labels:
                raise DatasetError(f"{data / name}: image {image} is listed twice")
            labels[image] = position[variant]
    images = sorted(labels)
    boxes = None
    if crop_to_bbox:
        box_path = data / "images_box.txt"
        corners = {}
        for image, rest in _pairs(box_path):
            try:
                corners[image] = [float(v) for v in rest.split()]
            except ValueError:
                corners[image] = []
            if len(corners[image]) != 4:
                raise DatasetError(f"{box_path}: image {image}: expected xmin ymin xmax ymax")
        boxless = [i for i in images if i not in corners]
        if boxless:
            raise DatasetError(f"{box_path} has no box for image {boxless[0]}")
        xyxy = np.array([corners[i] for i in images])
        boxes = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
    return make_records(
        [str(data / "images" / f"{i}.jpg") for i in images],
        [labels[i] for i in images],
        variants,
        boxes,
        image_ids=[int(i) for i in images],
        listed_in=data / LISTS[0].replace("train", "{train,val,test}"),
    )
