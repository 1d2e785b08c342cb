"""Users' own images: a folder of class sub-folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace_fsl.config import load_config
from subspace_fsl.data.cache import ImageCache, prepare
from subspace_fsl.data.cub import DatasetError
from subspace_fsl.data.folder import read_folder


def _image(path: Path, colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 20), colour).convert(mode).save(path)


def make_folder(root: Path) -> Path:
    _image(root / "sparrow" / "b.JPG", (200, 0, 0))
    _image(root / "sparrow" / "a.jpeg", (200, 0, 0))
    _image(root / "finch" / "x.PNG", (0, 200, 0), mode="P")
    _image(root / "finch" / "y.jpg", (0, 200, 0), mode="L")
    (root / "finch" / ".DS_Store").write_bytes(b"ignored")
    return root


def test_read_folder_columns_and_order(tmp_path: Path) -> None:
    table = read_folder(make_folder(tmp_path / "mine"))
    assert list(table.columns) == ["image_id", "path", "class_id", "class_name", "x", "y", "w", "h"]
    assert table["class_name"].tolist() == ["finch", "finch", "sparrow", "sparrow"]
    assert table["class_id"].tolist() == [0, 0, 1, 1]
    assert [Path(p).name for p in table["path"]] == ["x.PNG", "y.jpg", "a.jpeg", "b.JPG"]
    assert table["image_id"].tolist() == [1, 2, 3, 4] and table["w"].isna().all()


def test_folder_errors_name_the_culprit(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine")
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*empty holds no images"):
        read_folder(root)
    (root / "empty").rmdir()
    (root / "finch" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"notes\.txt is not a \.jpg/\.jpeg/\.png"):
        read_folder(root)
    (root / "finch" / "notes.txt").unlink()
    (root / "README").write_text("hi")
    with pytest.raises(DatasetError, match="README is a file directly in"):
        read_folder(root)
    with pytest.raises(DatasetError, match="does not exist"):
        read_folder(tmp_path / "nowhere")


def test_prepare_from_a_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine")
    cfg = load_config(
        None,
        [
            "dataset.source=folder",
            "dataset.name=mine",
            f"dataset.root={root}",
            f"results_dir={tmp_path / 'results'}",
            "dataset.image_size=16",
        ],
    )
    cache = ImageCache.open(prepare(cfg, workers=1, progress=False))
    assert cache.images.shape == (4, 3, 16, 16)
    assert cache.index["path"].tolist() == [
        "finch/x.PNG",
        "finch/y.jpg",
        "sparrow/a.jpeg",
        "sparrow/b.JPG",
    ]
    # palette and grayscale images were converted to RGB: green stays green, grey is grey
    assert cache.images[0, 1].mean() > 190 and cache.images[0, 0].mean() < 10
    grey = cache.images[1].astype(np.int16)
    assert np.abs(grey[0] - grey[1]).max() <= 1
    with pytest.raises(DatasetError, match="crop_to_bbox"):
        prepare({**cfg, "dataset": {**cfg["dataset"], "crop_to_bbox": True}}, progress=False)
