"""The parsed form every data set reader produces, its error, and the list-file parser.

A reader returns one row per image with :data:`COLUMNS`: ``image_id`` (unique integer),
``path`` (absolute), ``class_id`` (0-based, the data set's class order), ``class_name``,
and the bounding box ``x, y, w, h`` in pixels of the original image (NaN without a crop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["image_id", "path", "class_id", "class_name", "x", "y", "w", "h"]


class DatasetError(ValueError):
    """A data set folder whose list files or images are inconsistent; names the file."""


def read_table(path: Path, names: list[str]) -> pd.DataFrame:
    """Whitespace-separated list file with exactly ``len(names)`` fields on each line."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            # the last field (a path or class name) may contain spaces: split at most n-1 times
            fields = line.strip().split(maxsplit=len(names) - 1)
            if len(fields) != len(names):
                raise DatasetError(
                    f"{path}, line {number}: expected {len(names)} fields "
                    f"({', '.join(names)}), got {line.rstrip()!r}"
                )
            rows.append(fields)
    table = pd.DataFrame(rows, columns=names)
    for name in names:
        if name in ("image_id", "class_id"):
            try:
                table[name] = table[name].astype(np.int64)
            except ValueError as exc:
                raise DatasetError(f"{path}: column {name} is not an integer: {exc}") from exc
        elif name in ("x", "y", "w", "h"):
            try:
                table[name] = table[name].astype(np.float64)
            except ValueError as exc:
                raise DatasetError(f"{path}: column {name} is not a number: {exc}") from exc
    for key in ("image_id",) if "image_id" in names else ("class_id",):
        duplicated = table[key][table[key].duplicated()]
        if len(duplicated):
            raise DatasetError(f"{path}: {key} {int(duplicated.iloc[0])} appears more than once")
    return table




def make_records(
    paths: list[str],
    class_ids: list[int] | np.ndarray,
    class_names: list[str],
    boxes: np.ndarray | None = None,
    image_ids: list[int] | np.ndarray | None = None,
    listed_in: Path | str = "the image list",
) -> pd.DataFrame:
    """The reader table from absolute image ``paths``, their 0-based ``class_ids`` into
    ``class_names`` and optional ``boxes`` [n, 4] (x, y, w, h); image_id defaults to 1..n.

    Every image must exist, every class must have an image and every box must be non-empty
    (``DatasetError`` naming ``listed_in`` and the first offender)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DatasetError(
            f"{listed_in} lists {len(missing)} missing image file(s), first: {missing[0]}"
        )
    ids = np.asarray(class_ids, dtype=np.int64)
    empty = sorted(set(range(len(class_names))) - set(ids.tolist()))
    if empty:
        raise DatasetError(f"{listed_in}: class {class_names[empty[0]]!r} has no images")
    table = pd.DataFrame(
        {
            "image_id": np.arange(1, len(paths) + 1, dtype=np.int64)
            if image_ids is None
            else np.asarray(image_ids, dtype=np.int64),
            "path": [str(p) for p in paths],
            "class_id": ids,
            "class_name": [class_names[i] for i in ids],
        }
    )
    values = np.full((len(paths), 4), np.nan) if boxes is None else np.asarray(boxes, float)
    if boxes is not None:
        bad = np.flatnonzero((values[:, 2] <= 0) | (values[:, 3] <= 0))
        if len(bad):
            raise DatasetError(f"{listed_in}: empty bounding box for {paths[bad[0]]}")
    for column, values_ in zip(("x", "y", "w", "h"), values.T, strict=True):
        table[column] = values_
    return table[COLUMNS].sort_values("image_id").reset_index(drop=True)
