"""Image decoding, the uint8 cache, and prepare(cfg) with its stamp check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace_fsl.cli import main as cli_main
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import CacheError, ImageCache, build_cache, prepare, source_stamp
from subspace_fsl.data.cub import read_cub
from subspace_fsl.data.images import ImageDecodeError, load_image


def test_resize_and_centre_crop(tmp_path: Path) -> None:
    # left third red, middle green, right third blue: the centre crop keeps mostly green
    pixels = np.zeros((40, 120, 3), dtype=np.uint8)
    pixels[:, :40, 0] = pixels[:, 40:80, 1] = pixels[:, 80:, 2] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    array = load_image(tmp_path / "wide.png", 16)
    assert array.shape == (3, 16, 16) and array.dtype == np.uint8
    assert array[1].mean() > 200 and array[0, :, 4:12].max() < 30
    larger = load_image(tmp_path / "wide.png", 16, resize=32)  # resize 32 then crop 16: all green
    assert larger[1].min() > 200


def test_bbox_crop_keeps_the_box(tmp_path: Path) -> None:
    pixels = np.full((300, 400, 3), 20, dtype=np.uint8)
    pixels[100:200, 150:260] = (250, 30, 30)  # the "bird"
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95)
    cropped = load_image(tmp_path / "photo.jpg", 24, bbox=(150, 100, 110, 100))
    assert cropped[0].mean() > 200 and cropped[1].mean() < 70  # JPEG draft path + crop
    whole = load_image(tmp_path / "photo.jpg", 24)
    assert whole[0].mean() < 150
    with pytest.raises(ImageDecodeError, match="outside"):
        load_image(tmp_path / "photo.jpg", 24, bbox=(500, 500, 10, 10))


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_colour_modes_are_converted_to_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.new("RGB", (20, 20), (200, 200, 200))
    if mode == "I;16":
        converted = Image.fromarray(np.full((20, 20), 200 * 256, dtype=np.uint16))
    elif mode == "RGBA":
        converted = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent -> white
    else:
        converted = image.convert(mode)
    path = tmp_path / f"image.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
    converted.save(path)
    array = load_image(path, 16)
    assert array.shape == (3, 16, 16)
    expected = 255 if mode == "RGBA" else 200
    assert abs(int(array.mean()) - expected) <= 3, mode


def test_unreadable_and_truncated_images_are_named(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"text\.jpg"):
        load_image(tmp_path / "text.jpg", 16)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg.*truncated"):
        load_image(tmp_path / "cut.jpg", 16)


def _config(tmp_path: Path, *overrides: str) -> dict:
    return load_config(
        None,
        [
            f"results_dir={tmp_path / 'results'}",
            f"data_dir={tmp_path / 'data'}",
            "dataset.synthetic.classes=6",
            "dataset.synthetic.images_per_class=4",
            "dataset.synthetic.size=32",
            "dataset.image_size=32",
            *overrides,
        ],
    )


def test_build_and_open_cache(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cache = ImageCache.open(prepare(cfg, workers=1, progress=False))
    assert cache.directory == tmp_path / "results" / "cache" / "synthetic"
    assert isinstance(cache.images, np.memmap) and cache.images.shape == (24, 3, 32, 32)
    assert list(cache.index.columns) == ["image_id", "path", "class_id", "class_name"]
    assert not Path(cache.index["path"][0]).is_absolute()  # relative to the data root
    assert cache.labels.tolist() == [c for c in range(6) for _ in range(4)]
    assert len(cache.class_names) == 6 and cache.class_ids(cache.class_names[2:4]).tolist() == [
        2,
        3,
    ]
    records = read_cub(tmp_path / "data" / "synthetic")
    np.testing.assert_array_equal(cache.images[5], load_image(records["path"][5], 32))
    assert not [p for p in cache.directory.parent.iterdir() if p.name.startswith(".")]
    assert isinstance(cache.in_memory().images, np.ndarray)


def test_prepare_reuses_a_fresh_cache_and_rebuilds_a_stale_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = _config(tmp_path)
    cache_dir = prepare(cfg, workers=1, progress=False)
    images = cache_dir / "images.npy"
    built = images.stat().st_mtime_ns
    prepare(cfg, workers=1, progress=False)
    assert images.stat().st_mtime_ns == built and "up to date" in caplog.text
    # a changed preprocessing setting: rebuilt, and the log says why
    caplog.clear()
    prepare(_config(tmp_path, "dataset.crop_to_bbox=true"), workers=1, progress=False)
    assert "rebuilding the stale cache" in caplog.text
    assert ImageCache.open(cache_dir).meta["crop_to_bbox"] is True
    # changed source data (an image replaced by a different one): rebuilt too
    caplog.clear()
    first = next((tmp_path / "data" / "synthetic" / "images").rglob("*.jpg"))
    Image.new("RGB", (32, 32), (1, 2, 3)).save(first, quality=50)
    prepare(cfg, workers=1, progress=False)
    assert "rebuilding the stale cache" in caplog.text
    # other synthetic settings: the raw data is generated again
    caplog.clear()
    prepare(_config(tmp_path, "dataset.synthetic.seed=3"), workers=1, progress=False)
    assert "generating it again" in caplog.text


def test_open_rejects_incomplete_or_inconsistent_caches(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cache_dir = prepare(cfg, workers=1, progress=False)
    meta = json.loads((cache_dir / "meta.json").read_text())
    (cache_dir / "meta.json").write_text(json.dumps({**meta, "shape": [25, 3, 32, 32]}))
    with pytest.raises(CacheError, match=r"meta\.json says"):
        ImageCache.open(cache_dir)
    (cache_dir / "meta.json").write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(CacheError, match="format_version"):
        ImageCache.open(cache_dir)
    (cache_dir / "meta.json").unlink()
    with pytest.raises(CacheError, match="not a complete cache"):
        ImageCache.open(cache_dir)
    prepare(cfg, workers=1, progress=False)  # an incomplete cache is rebuilt
    assert ImageCache.open(cache_dir).images.shape[0] == 24


def test_a_bad_image_stops_the_build_and_leaves_no_cache(tmp_path: Path) -> None:
    root = tmp_path / "data" / "synthetic"
    prepare(
        _config(tmp_path), raw_root=root, cache_dir=tmp_path / "first", workers=1, progress=False
    )
    records = read_cub(root)
    Path(records["path"][3]).write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(ImageDecodeError, match=Path(records["path"][3]).name):
        build_cache(
            records, tmp_path / "c", 32, source_stamp=source_stamp(records, root), progress=False
        )
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.*"))


def test_multiprocess_decoding_matches(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "dataset.synthetic.images_per_class=12")
    one = ImageCache.open(prepare(cfg, cache_dir=tmp_path / "one", workers=1, progress=False))
    two = ImageCache.open(prepare(cfg, cache_dir=tmp_path / "two", workers=2, progress=False))
    np.testing.assert_array_equal(one.images, two.images)


def test_cli_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "prepare",
        "--set",
        f"results_dir={tmp_path / 'r'}",
        "--set",
        f"data_dir={tmp_path / 'd'}",
        "--set",
        "dataset.synthetic.classes=4",
        "--set",
        "dataset.synthetic.images_per_class=2",
        "--set",
        "dataset.synthetic.size=32",
        "--set",
        "dataset.image_size=32",
        "--workers",
        "1",
    ]
    assert cli_main(args) == 0
    assert "8 images, 4 classes, 32x32 px" in capsys.readouterr().out
    assert (
        cli_main(
            [
                *args[:-2],
                "--set",
                "dataset.source=folder",
                "--set",
                f"dataset.root={tmp_path / 'none'}",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_meta_holds_the_checksum_of_the_bytes_written(tmp_path: Path) -> None:
    import hashlib

    cache_dir = prepare(_config(tmp_path), workers=1, progress=False)
    meta = json.loads((cache_dir / "meta.json").read_text())
    independent = hashlib.sha256((cache_dir / "images.npy").read_bytes()).hexdigest()
    assert meta["images_sha256"] == f"sha256:{independent}"


def test_a_cache_overwritten_with_zeros_of_the_same_size_is_refused_then_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path)
    cache_dir = prepare(cfg, workers=1, progress=False)
    ImageCache.open(cache_dir)  # verified (the record written at build time)
    images = cache_dir / "images.npy"
    header = np.load(images, mmap_mode="r").offset
    size = images.stat().st_size
    with open(images, "r+b") as handle:  # same size, same header, black images
        handle.seek(header)
        handle.write(bytes(size - header))
    assert images.stat().st_size == size
    with pytest.raises(CacheError, match=r"images\.npy has checksum .* its bytes changed"):
        ImageCache.open(cache_dir)
    with pytest.raises(CacheError, match=str(images)):
        cli_main_train_data(cfg, cache_dir)
    # prepare, the cache's producer, rebuilds it (and says why)
    caplog.set_level(logging.WARNING)
    prepare(cfg, workers=1, progress=False)
    assert "its bytes changed" in caplog.text
    assert ImageCache.open(cache_dir).images.max() > 0


def cli_main_train_data(cfg: dict, cache_dir: Path) -> None:
    """What train and evaluate do first: open the cache they are given."""
    from subspace_fsl.engine.data import open_data

    open_data(cfg, cache_dir=cache_dir)


def test_verification_hashes_once_per_state_of_the_file(tmp_path: Path) -> None:
    cache_dir = prepare(_config(tmp_path), workers=1, progress=False)
    record = cache_dir / "images.npy.verified"
    assert record.is_file()  # written while building: the first open does not hash
    # a record for another state of the file is not trusted: the file is hashed again
    stale = {**json.loads(record.read_text()), "mtime_ns": 1}
    record.write_text(json.dumps(stale))
    ImageCache.open(cache_dir)
    state = (cache_dir / "images.npy").stat()
    assert json.loads(record.read_text())["mtime_ns"] == state.st_mtime_ns


def test_a_cache_given_to_train_with_other_preprocessing_settings_is_refused(
    tmp_path: Path,
) -> None:
    from subspace_fsl.engine.data import open_data
    from subspace_fsl.provenance import ProvenanceError

    cache_dir = prepare(_config(tmp_path), workers=1, progress=False)
    with pytest.raises(ProvenanceError) as error:
        open_data(_config(tmp_path, "dataset.image_size=24"), cache_dir=cache_dir)
    message = str(error.value)
    assert str(cache_dir / "meta.json") in message
    assert "dataset.image_size=32" in message and "dataset.image_size=24" in message
