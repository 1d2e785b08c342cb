"""FGVC-Aircraft, Stanford Dogs, Flowers-102 and Stanford Cars: tiny archives built here in
each set's exact published layout (real JPEGs, real .mat files written with scipy.io), read
through the real download path (file:// URLs) and from an extracted folder."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from subspace_fsl.config import load_config
from subspace_fsl.data.cache import ImageCache, prepare
from subspace_fsl.data.records import DatasetError
from subspace_fsl.data.sources import remote_files
from subspace_fsl.data.splits import make_split

RED, WHITE = (220, 20, 20), (255, 255, 255)


def _jpeg(path: Path, size: tuple[int, int], colour=RED, banner: int = 0) -> None:
    """A JPEG of ``colour`` with a white band of ``banner`` rows at the bottom."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if banner:
        image.paste(WHITE, (0, size[1] - banner, size[0], size[1]))
    image.save(path, quality=95)


def _tar(archive: Path, folder: Path, members: list[str]) -> Path:
    with tarfile.open(archive, "w:gz" if archive.suffix in (".gz", ".tgz") else "w") as tar:
        for member in members:
            tar.add(folder / member, arcname=member)
    return archive


def _prepare(tmp: Path, source: str, *settings: str):
    cfg = load_config(None, [
        f"dataset.source={source}", f"dataset.name={source}", f"data_dir={tmp / 'data'}",
        f"results_dir={tmp / 'results'}", "dataset.image_size=16", *settings,
    ])
    return ImageCache.open(prepare(cfg, workers=1, progress=False)), cfg


# --- FGVC-Aircraft 2013b -----------------------------------------------------------------

VARIANTS = ["707-320", "A300B4", "F/A-18", "Cessna 172"]  # "/" and " " as in variants.txt


def make_aircraft(base: Path) -> Path:
    """fgvc-aircraft-2013b/data/: 4 variants, 2 images each spread over train/val/test; each
    image red inside its box, a white 6-row copyright banner below it."""
    data = base / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in VARIANTS))
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    boxes = []
    for i, variant in enumerate(VARIANTS):
        for j, part in enumerate(("train", "test") if i % 2 else ("val", "train")):
            name = f"{1000000 + 10 * i + j:07d}"
            lists[part].append(f"{name} {variant}\n")
            _jpeg(data / "images" / f"{name}.jpg", (40, 30), banner=6)
            boxes.append(f"{name} 2 3 38 20\n")  # xmin ymin xmax ymax: above the banner
    for part, lines in lists.items():
        (data / f"images_variant_{part}.txt").write_text("".join(lines))
    (data / "images_box.txt").write_text("".join(boxes))
    return base / "fgvc-aircraft-2013b"


def test_aircraft_archive_from_a_file_url_variants_and_frn_crop(tmp_path: Path) -> None:
    make_aircraft(tmp_path / "src")
    (tmp_path / "src" / "README.md").write_text("FGVC-Aircraft\n")
    archive = _tar(tmp_path / "fgvc-aircraft-2013b.tar.gz", tmp_path / "src",
                   ["README.md", "fgvc-aircraft-2013b"])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    cache, _ = _prepare(tmp_path, "aircraft", f"dataset.url={archive.as_uri()}",
                        f"dataset.md5={md5}", "dataset.crop_to_bbox=true")
    assert (tmp_path / "data" / "aircraft" / "data" / "variants.txt").is_file()
    assert cache.class_names == VARIANTS  # variants.txt order
    assert cache.images.shape == (8, 3, 16, 16)
    assert cache.index["image_id"].tolist() == [1000000, 1000001, 1000010, 1000011,
                                                1000020, 1000021, 1000030, 1000031]
    assert cache.index["class_name"].tolist() == [v for v in VARIANTS for _ in range(2)]
    # cropped to the box: the white banner is gone, every pixel is the aircraft's red
    assert np.abs(cache.images.astype(int) - np.array(RED)[None, :, None, None]).max() < 12


def test_aircraft_from_the_extracted_folder_keeps_the_banner_without_crop(tmp_path: Path) -> None:
    root = make_aircraft(tmp_path / "src")
    cache, _ = _prepare(tmp_path, "aircraft", f"dataset.root={root}",
                        "dataset.url=file:///nowhere/fgvc-aircraft-2013b.tar.gz")
    assert cache.class_names == VARIANTS and len(cache.index) == 8
    assert cache.images[:, :, -1, :].min() > 240  # the bottom row: the white banner


def test_aircraft_unknown_variant_is_named(tmp_path: Path) -> None:
    from subspace_fsl.data.aircraft import read_aircraft

    root = make_aircraft(tmp_path)
    with (root / "data" / "images_variant_test.txt").open("a") as handle:
        handle.write("1000099 Boeing 999\n")
    with pytest.raises(DatasetError, match=r"images_variant_test\.txt: variant 'Boeing 999'"):
        read_aircraft(root)


def test_frn_aircraft_rule_is_50_25_25_by_variant_index() -> None:
    names = [f"variant-{i:03d}" for i in range(100)]  # variants.txt order
    split = make_split(names, "frn-aircraft")
    assert split["counts"] == [50, 25, 25] and split["seed"] is None
    assert split["base"][:3] == ["variant-000", "variant-002", "variant-004"]
    assert split["val"][:3] == ["variant-001", "variant-005", "variant-009"]
    assert split["novel"][:3] == ["variant-003", "variant-007", "variant-011"]
    with pytest.raises(ValueError, match="FGVC-Aircraft's 100 classes, this data set has 99"):
        make_split(names[:99], "frn-aircraft")


# --- Stanford Dogs -----------------------------------------------------------------------

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02099601-golden_retriever"]


def _cell(strings: list[str]) -> np.ndarray:
    """A MATLAB cell column of strings, as the official .mat lists hold them."""
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def make_dogs_mirror(mirror: Path) -> None:
    """images.tar (Images/<breed>/...) and lists.tar (file_list / train_list / test_list)."""
    src = mirror / "src"
    files, labels = [], []
    for label, breed in enumerate(BREEDS, 1):
        for j in range(label + 1):  # 2, 3, 4 images
            relative = f"{breed}/{breed.split('-')[0]}_{j}.jpg"
            _jpeg(src / "Images" / relative, (30 + j, 24), (30 * label, 90, 60))
            files.append(relative)
            labels.append(label)
    half = len(files) // 2
    for name, rows in (("file_list", slice(None)), ("train_list", slice(None, half)),
                       ("test_list", slice(half, None))):
        savemat(src / f"{name}.mat", {
            "file_list": _cell(files[rows]),
            "annotation_list": _cell([f.removesuffix(".jpg") for f in files[rows]]),
            "labels": np.array(labels[rows], dtype=np.uint8)[:, None]})
    _tar(mirror / "images.tar", src, ["Images"])
    _tar(mirror / "lists.tar", src, ["file_list.mat", "train_list.mat", "test_list.mat"])


def test_dogs_from_a_mirror_folder_url_with_both_archives(tmp_path: Path) -> None:
    make_dogs_mirror(tmp_path / "mirror")
    url = (tmp_path / "mirror").as_uri() + "/"
    assert [r.name for r in remote_files("dogs", {"url": url, "md5": "official",
                                                  "size_bytes": "official"})] == [
        "images.tar", "lists.tar"]
    cache, _ = _prepare(tmp_path, "dogs", f"dataset.url={url}")
    assert cache.class_names == BREEDS
    assert cache.index["class_id"].tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert (tmp_path / "data" / "images.tar.source.json").is_file()
    with pytest.raises(DatasetError, match="one value, but source dogs fetches 2 files"):
        remote_files("dogs", {"url": url, "md5": "0" * 32, "size_bytes": "official"})


def test_dogs_label_that_disagrees_with_its_folder_is_named(tmp_path: Path) -> None:
    from subspace_fsl.data.dogs import read_dogs

    make_dogs_mirror(tmp_path)
    root = tmp_path / "src"
    savemat(root / "file_list.mat", {"file_list": _cell([f"{BREEDS[0]}/n02085620_0.jpg"]),
                                     "labels": np.array([[2]])})
    with pytest.raises(DatasetError, match=r"file_list\.mat: .*n02085620_0\.jpg has label 2"):
        read_dogs(root)


# --- Oxford Flowers-102 ------------------------------------------------------------------


def test_flowers_from_a_mirror_folder_url_with_the_label_file(tmp_path: Path) -> None:
    mirror, src = tmp_path / "mirror", tmp_path / "src"
    labels = [2, 1, 2, 3, 1, 3, 3]  # image k has labels[k - 1]
    for k in range(1, len(labels) + 1):
        _jpeg(src / "jpg" / f"image_{k:05d}.jpg", (28, 20 + k))
    mirror.mkdir()
    _tar(mirror / "102flowers.tgz", src, ["jpg"])
    savemat(mirror / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    # the tiny archive is not the published one: its published MD5 must not match
    with pytest.raises(ValueError, match="MD5"):
        _prepare(tmp_path / "official", "flowers", f"dataset.url={mirror.as_uri()}/")
    cache, _ = _prepare(tmp_path, "flowers", f"dataset.url={mirror.as_uri()}/",
                        "dataset.md5=null")
    assert cache.class_names == ["001", "002", "003"]
    assert cache.index["class_id"].tolist() == [1, 0, 1, 2, 0, 2, 2]
    assert cache.index["path"].tolist()[0] == "jpg/image_00001.jpg"
    with pytest.raises(DatasetError, match="source flowers has none"):
        _prepare(tmp_path, "flowers", "dataset.crop_to_bbox=true")


# --- Stanford Cars -----------------------------------------------------------------------

CARS = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "Acura RL Sedan 2012"]
CAR_FOLDERS = ["001.AM_General_Hummer_SUV_2000", "002.Ram_C-V_Cargo_Van_Minivan_2012",
               "003.Acura_RL_Sedan_2012"]


def make_cars_devkit(src: Path) -> None:
    rows = []
    for k, label in enumerate([3, 1, 2, 1, 3, 2], 1):
        fname = f"{k:05d}.jpg"
        _jpeg(src / "cars_train" / fname, (40, 32), banner=8)
        rows.append((4, 2, 36, 18, label, fname))  # x1 y1 x2 y2 above the white band
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("fname", "O")]
    annotations = np.array([rows], dtype=dtype)
    (src / "devkit").mkdir()
    savemat(src / "devkit" / "cars_train_annos.mat", {"annotations": annotations})
    names = np.empty((1, len(CARS)), dtype=object)
    names[0, :] = CARS
    savemat(src / "devkit" / "cars_meta.mat", {"class_names": names})


def test_cars_devkit_archives_names_labels_and_crop(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    make_cars_devkit(tmp_path / "src")
    mirror.mkdir()
    _tar(mirror / "cars_train.tgz", tmp_path / "src", ["cars_train"])
    _tar(mirror / "car_devkit.tgz", tmp_path / "src", ["devkit"])
    with pytest.raises(DatasetError, match="no official download any more"):
        _prepare(tmp_path / "none", "cars")
    # a folder URL serves the old published archives, checked by their published MD5s
    assert [(r.url, r.md5) for r in remote_files(
        "cars", {"url": "file:///m/", "md5": "official", "size_bytes": "official"})] == [
        ("file:///m/cars_train.tgz", "065e5b463ae28d29e77c1b4b166cfe61"),
        ("file:///m/car_devkit.tgz", "c3b158d763b6e2245038c8ad08e45376")]
    cache, _ = _prepare(tmp_path, "cars", f"dataset.url={mirror.as_uri()}/", "dataset.md5=null",
                        "dataset.crop_to_bbox=true")
    assert cache.class_names == CAR_FOLDERS  # the class-folder names: one set of lists
    assert cache.index["class_id"].tolist() == [2, 0, 1, 0, 2, 1]
    assert np.abs(cache.images.astype(int) - np.array(RED)[None, :, None, None]).max() < 12


def test_cars_class_folders_and_the_dn4_lists(tmp_path: Path) -> None:
    root = tmp_path / "stanford_cars"
    for c, folder in enumerate(CAR_FOLDERS):
        for j in range(2):
            _jpeg(root / folder / f"{c}{j}.jpg", (24, 24))
    cache, _ = _prepare(tmp_path, "cars", f"dataset.root={root}")
    assert cache.class_names == CAR_FOLDERS and len(cache.index) == 6
    (tmp_path / "mine" / "Hummer").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"mine exists but does not hold source cars's layout"):
        _prepare(tmp_path, "cars", f"dataset.root={tmp_path / 'mine'}")
    with pytest.raises(DatasetError, match="class folders, which has no bounding boxes"):
        _prepare(tmp_path, "cars", f"dataset.root={root}", "dataset.crop_to_bbox=true")
    # the shipped DN4 lists name the real set's 196 folders: 193 of them are not in this one
    shipped = Path(__file__).resolve().parents[1] / "config" / "splits"
    with pytest.raises(ValueError, match=r"cars_dn4_base\.txt: class '005\.Acura_TSX"):
        make_split(cache.class_names, "lists", lists={
            s: str(shipped / f"cars_dn4_{s}.txt") for s in ("base", "val", "novel")})


def test_a_folder_archive_of_class_folders_is_found_inside_its_top_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for c, folder in enumerate(CAR_FOLDERS):
        _jpeg(src / "stanford_cars" / folder / f"{c}.jpg", (20, 20))
    archive = _tar(tmp_path / "stanford_cars.tar", src, ["stanford_cars"])
    cache, _ = _prepare(tmp_path, "cars", f"dataset.url={archive.as_uri()}", "dataset.md5=null")
    assert cache.class_names == CAR_FOLDERS


def test_shipped_class_lists_have_the_published_sizes() -> None:
    from subspace_fsl.data.splits import read_class_list

    shipped = Path(__file__).resolve().parents[1] / "config" / "splits"
    sizes = {name: [len(read_class_list(shipped / f"{name}_{s}.txt"))
                    for s in ("base", "val", "novel")]
             for name in ("cars_dn4", "dogs_dn4", "cub_bifrn")}
    assert sizes == {"cars_dn4": [130, 17, 49], "dogs_dn4": [70, 20, 30],
                     "cub_bifrn": [130, 20, 50]}
    cub = [n for s in ("base", "val", "novel")
           for n in read_class_list(shipped / f"cub_bifrn_{s}.txt")]
    assert sorted(int(n[:3]) for n in cub) == list(range(1, 201))
