"""Part ground truth: the synthetic generator's CUB-format part files land on the drawn parts,
the CUB reader parses them, and the image cache carries them through crop and resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from subspace_fsl.data import cache, cub, synth
from subspace_fsl.data.cub import DatasetError, read_parts
from subspace_fsl.explain.parts import load_part_locations

HEAD_NAMES = list(synth.HEAD_COLOURS)
HEAD_RGB = np.array(list(synth.HEAD_COLOURS.values()), dtype=np.float64)
PARTS = {"head": "red", "wing": "striped", "tail": "fan", "beak": "long"}


def _nearest_head_colour(pixel: np.ndarray) -> str:
    return HEAD_NAMES[int(np.argmin(((HEAD_RGB - pixel) ** 2).sum(axis=1)))]


@pytest.mark.parametrize("seed", range(6))
def test_the_head_location_is_on_the_drawn_head(seed):
    # the same random numbers with two head colours: the images differ only where the head is
    red, _, located = synth.render_with_parts(PARTS, 84, np.random.default_rng(seed))
    blue, _, again = synth.render_with_parts({**PARTS, "head": "blue"}, 84,
                                             np.random.default_rng(seed))
    assert located == again
    x, y, visible = located["head"]
    assert visible == 1
    red, blue = np.asarray(red, dtype=np.float64), np.asarray(blue, dtype=np.float64)
    r, g, b = red[int(y), int(x)]
    assert r > g + 60 and r > b + 60  # the red head (the photo's colour jitter shifts hue)
    r, g, b = blue[int(y), int(x)]
    assert b > r + 50 and b > g + 30
    changed = np.abs(red - blue).sum(axis=-1) > 60
    rows, cols = np.nonzero(changed)
    # the changed region is the head disc: its centre is the annotated head location
    assert abs(cols.mean() + 0.5 - x) < 1.0 and abs(rows.mean() + 0.5 - y) < 1.0
    # every other part lies outside the changed region (nothing else changed colour)
    for name in ("wing", "tail", "body", "leg"):
        px, py, seen = located[name]
        if seen:
            assert not changed[int(py), int(px)], name


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("p") / "s", 12, 4, 96, seed=3, workers=1,
                          progress=False)


def test_part_files_are_in_cubs_format_and_read_back(synthetic: Path):
    names = (synthetic / "parts" / "parts.txt").read_text().splitlines()
    assert names == [f"{i} {n}" for i, n in enumerate(synth.PART_POINTS, start=1)]
    lines = (synthetic / "parts" / "part_locs.txt").read_text().splitlines()
    assert len(lines) == 48 * len(synth.PART_POINTS)
    image_id, part_id, x, _y, visible = lines[0].split()
    assert (image_id, part_id, visible) == ("1", "1", "1") and 0 <= float(x) < 96
    table = read_parts(synthetic)
    assert list(table.columns) == cub.PART_COLUMNS
    assert set(table["part_name"]) == set(synth.PART_POINTS)
    assert table.groupby("image_id").size().eq(len(synth.PART_POINTS)).all()
    assert table["visible"].mean() > 0.9


def test_a_bad_part_file_is_named(tmp_path: Path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "parts.txt").write_text("1 head\n")
    (tmp_path / "parts" / "part_locs.txt").write_text("1 1 3.0 4.0 1\n1 2 3.0 4.0 1\n")
    with pytest.raises(DatasetError, match=r"part_locs.txt: part ids \[2\]"):
        read_parts(tmp_path)
    (tmp_path / "parts" / "part_locs.txt").write_text("1 1 3.0 4.0 1\n1 1 5.0 4.0 1\n")
    with pytest.raises(DatasetError, match="image_id 1 part_id 1 appears twice"):
        read_parts(tmp_path)
    assert read_parts(tmp_path / "nowhere") is None


@pytest.mark.parametrize(("size", "resize", "crop"), [(48, None, False), (48, 60, False),
                                                      (48, 52, True)])
def test_the_cache_carries_parts_through_crop_and_resize(synthetic: Path, tmp_path: Path,
                                                         size, resize, crop):
    records = cub.read_cub(synthetic, crop_to_bbox=crop)
    out = cache.build_cache(records, tmp_path / "cache", size, resize, crop, "stamp",
                            root=synthetic, progress=False)
    opened = cache.ImageCache.open(out)
    parts = load_part_locations(out, len(opened.labels))
    assert parts.names == list(synth.PART_POINTS)
    if resize is None and not crop:  # square images: a pure rescale 96 -> 48
        raw = read_parts(synthetic)
        heads = raw[raw["part_name"] == "head"].sort_values("image_id")
        np.testing.assert_allclose(parts.xy[:, 0, 0], heads["x"] / 2, atol=0.01)
    head = parts.names.index("head")
    seen = np.flatnonzero(parts.visible[:, head])
    assert len(seen) > 0
    assert ((parts.xy[seen, head] >= 0) & (parts.xy[seen, head] < size)).all()
    hits = []
    for row in seen:
        x, y = parts.xy[row, head].astype(int)
        pixel = opened.images[row][:, y, x].astype(np.float64)
        wanted = opened.index["class_name"].iloc[row].split(".", 1)[1].split("_")[0]
        hits.append(_nearest_head_colour(pixel) == wanted)
    assert np.mean(hits) >= 0.9, hits


def test_a_cache_without_parts_has_no_part_locations(tmp_path: Path):
    assert load_part_locations(tmp_path, 3) is None  # explain then leaves part measures out
