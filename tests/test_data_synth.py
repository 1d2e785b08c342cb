"""The synthetic sub-category generator: its own checks (layout, determinism, part design)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace_fsl.cli import main as cli_main
from subspace_fsl.data.cub import read_cub
from subspace_fsl.data.synth import PARTS, choose_combinations, generate, is_generated, max_classes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        tmp_path_factory.mktemp("s") / "synthetic", 12, 3, 32, seed=5, workers=2, progress=False
    )


def test_layout_is_cub_and_boxes_are_real(synthetic: Path) -> None:
    for name in (
        "images.txt",
        "classes.txt",
        "image_class_labels.txt",
        "bounding_boxes.txt",
        "parts.json",
        "synth.json",
    ):
        assert (synthetic / name).is_file(), name
    table = read_cub(synthetic, crop_to_bbox=True)
    assert len(table) == 36 and table["class_id"].nunique() == 12
    assert table["class_name"].iloc[0].startswith("001.")
    assert (table["image_id"] == np.arange(1, 37)).all()
    for row in table.itertuples():
        with Image.open(row.path) as image:
            assert image.size == (32, 32) and image.mode == "RGB" and image.format == "JPEG"
        assert 0 <= row.x and 0 <= row.y and row.x + row.w <= 32 and row.y + row.h <= 32
        assert 4 < row.w and 4 < row.h  # the bird is visible, not a degenerate box
    assert is_generated(synthetic, 12, 3, 32, 5) and not is_generated(synthetic, 12, 3, 32, 6)


def test_deterministic_for_a_seed(synthetic: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", 12, 3, 32, seed=5, workers=1, progress=False)
    for name in ("images.txt", "classes.txt", "bounding_boxes.txt", "parts.json"):
        assert (again / name).read_bytes() == (synthetic / name).read_bytes()
    first = sorted((synthetic / "images").rglob("*.jpg"))
    second = sorted((again / "images").rglob("*.jpg"))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    other = generate(tmp_path / "other", 12, 3, 32, seed=6, workers=1, progress=False)
    assert (other / "bounding_boxes.txt").read_bytes() != (
        synthetic / "bounding_boxes.txt"
    ).read_bytes()


def test_images_of_one_class_differ(synthetic: Path) -> None:
    folder = sorted((synthetic / "images").iterdir())[0]
    arrays = [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.iterdir())]
    assert np.abs(arrays[0] - arrays[1]).mean() > 10


@pytest.mark.parametrize("classes", [12, 60, 200])
def test_parts_are_shared_and_combinations_unique(classes: int) -> None:
    combos = choose_combinations(classes, seed=0)
    keys = [tuple(c[p] for p in PARTS) for c in combos]
    assert len(set(keys)) == classes  # no two classes share a combination
    assert len(PARTS) >= 3
    for part, values in PARTS.items():
        uses = Counter(c[part] for c in combos)
        assert set(uses) == set(values), part  # every value is used ...
        assert min(uses.values()) >= 2, part  # ... by several classes: no part identifies a class
        assert max(uses.values()) - min(uses.values()) <= 1, part  # balanced


def test_parts_file_matches_class_names(synthetic: Path) -> None:
    parts = json.loads((synthetic / "parts.json").read_text())
    names = [line.split()[1] for line in (synthetic / "classes.txt").read_text().splitlines()]
    assert list(parts["classes"]) == names
    for name, values in parts["classes"].items():
        assert all(f"{value}_{part}" in name for part, value in values.items())


def test_refuses_too_many_classes_and_an_existing_folder(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(max_classes())):
        choose_combinations(max_classes() + 1, 0)
    with pytest.raises(FileExistsError, match="already exists"):
        generate(synthetic, 12, 3, 32, 5)


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert (
        cli_main(
            [
                "synth",
                "--out",
                str(out),
                "--classes",
                "4",
                "--images-per-class",
                "2",
                "--size",
                "32",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert len(read_cub(out)) == 8
    assert str(out) in capsys.readouterr().out
    assert cli_main(["synth", "--out", str(out), "--classes", "4"]) == 2
    assert "already exists" in capsys.readouterr().err
