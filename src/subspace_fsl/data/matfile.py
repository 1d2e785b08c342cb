"""MATLAB ``.mat`` list files (the Dogs, Flowers and Cars annotations), read with scipy.io."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from subspace_fsl.data.records import DatasetError


def load_mat(path: str | os.PathLike[str], *keys: str) -> dict[str, Any]:
    """``{key: value}`` of ``path`` (``squeeze_me``: cells -> 1-D object arrays of str, struct
    arrays -> record arrays); a missing file or key or an unreadable file names the file."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        content = loadmat(path, squeeze_me=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise DatasetError(f"{path} is not a readable .mat file: {exc}") from exc
    absent = [k for k in keys if k not in content]
    if absent:
        raise DatasetError(f"{path} has no variable {absent[0]!r}")
    return {k: content[k] for k in keys}


def strings(values: Any) -> list[str]:
    """A cell array of strings as a list (a lone string becomes a one-element list)."""
    return [str(v) for v in np.atleast_1d(values)]


def integers(values: Any, path: str | os.PathLike[str], key: str) -> np.ndarray:
    """A numeric array as int64 [n]; non-integers are an error naming the file and key."""
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise DatasetError(f"{path}: {key} holds values that are not integers")
    return array.astype(np.int64)
