"""Users' own images: ``root/<class name>/*.jpg|*.jpeg|*.png`` (extensions case-insensitive).

Classes are the sub-folders in sorted order (class_id 0, 1, ...), images sorted by name within
each. Hidden entries (names starting with ".", e.g. ``.DS_Store``) are ignored; any other file
that is not a JPEG/PNG, a file directly in ``root``, an empty class folder or an image that
cannot be opened (a broken symbolic link, a symlink loop, no read permission) is an error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from subspace_fsl.data.records import COLUMNS, DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _check_readable(path: Path) -> None:
    """An image must be a regular file we may read: a broken link, a symlink loop or an
    unreadable file is named here, not deep inside the cache build."""
    try:
        mode = path.stat().st_mode  # follows links: ELOOP / ENOENT for a loop / broken link
    except OSError as exc:
        raise DatasetError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(f"image {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise DatasetError(f"image {path} cannot be read: permission denied")


def read_folder(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Same columns as ``read_cub``: image_id (1-based), absolute path, class_id, class_name,
    and NaN bounding boxes."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    strays = [p for p in entries if not p.is_dir()]
    if strays:
        raise DatasetError(
            f"{strays[0]} is a file directly in {root}; images belong in one sub-folder per class"
        )
    if not entries:
        raise DatasetError(f"{root} has no class sub-folders")
    rows = []
    for class_id, folder in enumerate(entries):
        files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        others = [p for p in files if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise DatasetError(f"{others[0]} is not a .jpg/.jpeg/.png file (class folder {folder})")
        if not files:
            raise DatasetError(f"class folder {folder} holds no images")
        for path in files:
            _check_readable(path)
        rows.extend((str(p), class_id, folder.name) for p in files)
    table = pd.DataFrame(rows, columns=["path", "class_id", "class_name"])
    table.insert(0, "image_id", np.arange(1, len(table) + 1, dtype=np.int64))
    table["class_id"] = table["class_id"].astype(np.int64)
    for column in ("x", "y", "w", "h"):
        table[column] = np.nan
    return table[COLUMNS]
