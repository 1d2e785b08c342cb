"""Decode every image once into a uint8 array [n, 3, H, W] on disk, opened memory-mapped.

A cache folder holds ``images.npy`` (uint8, written through ``np.lib.format.open_memmap``),
``index.csv`` (image_id, path relative to the data root, class_id, class_name) and
``meta.json`` (format version, shapes, preprocessing settings, the source's stamp, the
combined ``stamp`` and ``images_sha256``, the checksum of ``images.npy`` computed while it was
written). The folder is built under a temporary name and renamed when complete.
``prepare(cfg)`` reuses a cache only when its stamp equals the one the configuration and the
current source data give and its bytes match the checksum; otherwise it rebuilds it (and logs
why). ``ImageCache.open`` verifies the checksum once per state of the file: the verified
(size, mtime_ns, ctime_ns, inode) are kept in ``images.npy.verified``; any write to the file
changes them, and the next open hashes it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from subspace_fsl import provenance
from subspace_fsl.config import atomic_directory, atomic_write_text
from subspace_fsl.data.records import DatasetError
from subspace_fsl.data.images import load_image

log = logging.getLogger(__name__)

# 2: meta.json holds images_sha256 (a version-1 cache is rebuilt by prepare)
FORMAT_VERSION = 2
INDEX_COLUMNS = ["image_id", "path", "class_id", "class_name"]
IMAGES, VERIFIED = "images.npy", "images.npy.verified"


class CacheError(ValueError):
    """A cache folder that is incomplete, inconsistent or of another format; names the file."""


def source_stamp(records: pd.DataFrame, root: str | os.PathLike[str], extra: Any = None) -> str:
    """sha256 of the source listing: every image's relative path, size and class, plus the
    list files' contents (when present) and ``extra`` (e.g. the archive's MD5).

    Image bytes are not hashed (too slow for every ``prepare``): a file replaced by one of
    the same size and name goes unnoticed; delete the cache in that case.
    """
    root = Path(root)
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for name in ("images.txt", "classes.txt", "image_class_labels.txt", "bounding_boxes.txt"):
        if (root / name).is_file():
            digest.update(name.encode() + (root / name).read_bytes())
    for path, class_name in zip(records["path"], records["class_name"], strict=True):
        relative = os.path.relpath(path, root)
        digest.update(f"{relative}\t{os.path.getsize(path)}\t{class_name}\n".encode())
    return digest.hexdigest()


def cache_stamp(source: str, image_size: int, resize: int | None, crop_to_bbox: bool) -> str:
    """The stamp a cache must carry to be reused: source + preprocessing + format version."""
    settings = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "image_size": image_size,
        "resize": resize or image_size,
        "crop_to_bbox": bool(crop_to_bbox),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _decode(task: tuple[str, tuple[float, ...] | None, int, int]) -> np.ndarray:
    path, bbox, image_size, resize = task
    return load_image(path, image_size, resize, bbox)


def build_cache(
    records: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    image_size: int,
    resize: int | None = None,
    crop_to_bbox: bool = False,
    source_stamp: str = "",
    *,
    root: str | os.PathLike[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Decode ``records`` (``read_cub``/``read_folder`` rows) into the cache folder ``out_dir``.

    ``root`` is the data root the index's paths are relative to (default: the common parent).
    An existing ``out_dir`` is replaced only once the new cache is complete.
    """
    out_dir = Path(out_dir)
    if records.empty:
        raise DatasetError("no images to cache")
    resize = resize or image_size
    paths = [str(p) for p in records["path"]]
    root = (
        Path(root)
        if root is not None
        else Path(os.path.commonpath([os.path.dirname(p) for p in paths]))
    )
    boxes: list[tuple[float, ...] | None] = [None] * len(paths)
    if crop_to_bbox:
        box_values = records[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
        if np.isnan(box_values).any():
            raise DatasetError("crop_to_bbox is set but some records have no bounding box")
        boxes = [tuple(b) for b in box_values]
    with atomic_directory(out_dir) as tmp:
        shape = (len(paths), 3, image_size, image_size)
        images = np.lib.format.open_memmap(
            tmp / IMAGES, mode="w+", dtype=np.uint8, shape=shape
        )
        # the file's bytes are the .npy header then the rows in order: hash them as written
        with open(tmp / IMAGES, "rb") as handle:
            digest = hashlib.sha256(handle.read(images.offset))
        tasks = [(p, b, image_size, resize) for p, b in zip(paths, boxes, strict=True)]
        bar = tqdm(total=len(tasks), desc=f"cache {out_dir.name}", unit="img", disable=not progress)
        for i, array in enumerate(_decoded(tasks, workers)):
            images[i] = array
            digest.update(images[i])
            bar.update()
        bar.close()
        images.flush()
        del images
        index = pd.DataFrame(
            {
                "image_id": records["image_id"].to_numpy(dtype=np.int64),
                "path": [Path(os.path.relpath(p, root)).as_posix() for p in paths],
                "class_id": records["class_id"].to_numpy(dtype=np.int64),
                "class_name": records["class_name"].astype(str).to_numpy(),
            }
        )
        index.to_csv(tmp / "index.csv", index=False)
        write_cache_parts(tmp, records, root, image_size, resize, crop_to_bbox)
        images_digest = f"sha256:{digest.hexdigest()}"
        meta = cache_meta(shape, resize, crop_to_bbox, source_stamp, root, images_digest)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _record_verified(tmp, images_digest)  # hashed while written: no need to read it again
    return out_dir


def cache_meta(
    shape: tuple[int, ...],
    resize: int,
    crop_to_bbox: bool,
    source_stamp: str,
    root: str | os.PathLike[str],
    images_digest: str,
) -> dict[str, Any]:
    """The ``meta.json`` of a cache of uint8 images ``shape`` = [n, 3, size, size];
    ``images_digest`` is ``provenance.file_digest`` of its ``images.npy``."""
    image_size = int(shape[-1])
    return {
        "format_version": FORMAT_VERSION,
        "shape": list(shape),
        "dtype": "uint8",
        "image_size": image_size,
        "resize": resize,
        "crop_to_bbox": bool(crop_to_bbox),
        "source_stamp": source_stamp,
        "data_root": str(root),
        "stamp": cache_stamp(source_stamp, image_size, resize, crop_to_bbox),
        "images_sha256": images_digest,
    }


def _file_state(path: Path) -> dict[str, int]:
    """What any write, truncation or replacement of a file changes (ctime cannot be set
    back by a user, unlike mtime)."""
    info = path.stat()
    return {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "ctime_ns": info.st_ctime_ns,
        "inode": info.st_ino,
    }


def _record_verified(directory: Path, digest: str) -> None:
    """Note that ``images.npy`` in its current state has ``digest`` (best effort: a read-only
    cache is simply verified again next time)."""
    record = {**_file_state(directory / IMAGES), "images_sha256": digest}
    try:
        atomic_write_text(directory / VERIFIED, json.dumps(record) + "\n")
    except OSError as exc:
        log.debug("cannot record the verified state of %s: %s", directory / IMAGES, exc)


def verify_images(directory: str | os.PathLike[str], expected: str | None) -> None:
    """Raise ``CacheError`` unless ``images.npy`` has the checksum ``expected`` (from
    ``meta.json``). Hashes the file only when its (size, mtime_ns, ctime_ns, inode) differ
    from those recorded at its last successful verification."""
    directory = Path(directory)
    path = directory / IMAGES
    if not expected:
        raise CacheError(f"{directory / 'meta.json'} records no images_sha256; rebuild the cache")
    try:
        record = json.loads((directory / VERIFIED).read_text())
    except (OSError, ValueError):
        record = {}
    if record == {**_file_state(path), "images_sha256": expected}:
        return
    actual = provenance.file_digest(path)
    if actual != expected:
        raise CacheError(
            f"{path} has checksum {actual[:19]}..., meta.json says {expected[:19]}...: its bytes "
            f"changed after the cache was built; delete {directory} and run prepare again"
        )
    _record_verified(directory, expected)


def check_cache_settings(cache: ImageCache, cfg: Mapping[str, Any]) -> None:
    """Raise ``provenance.ProvenanceError`` when the cache was made with other
    preprocessing settings (``dataset.image_size``, ``resize``, ``crop_to_bbox``) than
    ``cfg``'s: the images a run would see are not the ones its settings describe."""
    dataset = cfg["dataset"]
    meta = cache.meta

    def settings(image_size: int, resize: int | None, crop: bool) -> dict[str, Any]:
        return {
            "dataset.image_size": image_size,
            "dataset.resize": resize or image_size,
            "dataset.crop_to_bbox": bool(crop),
        }

    provenance.check(
        cache.directory / "meta.json",
        settings(meta["image_size"], meta["resize"], meta["crop_to_bbox"]),
        settings(dataset["image_size"], dataset["resize"], dataset["crop_to_bbox"]),
        remedy="run `subspace-fsl prepare` with the current settings or pass the cache made "
        "with them",
    )


def _decoded(
    tasks: list[tuple[str, tuple[float, ...] | None, int, int]], workers: int
) -> Iterator[np.ndarray]:
    if workers <= 1 or len(tasks) < 64:
        yield from map(_decode, tasks)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_decode, tasks, chunksize=32)


@dataclass
class ImageCache:
    """An opened cache: ``images`` uint8 [n, 3, H, W] (memory-mapped), ``index``, ``labels``."""

    directory: Path
    images: np.ndarray
    index: pd.DataFrame
    labels: np.ndarray
    meta: dict[str, Any]

    @property
    def stamp(self) -> str:
        return str(self.meta["stamp"])

    @property
    def class_names(self) -> list[str]:
        """Class names by class_id (0, 1, ...)."""
        pairs = self.index.drop_duplicates("class_id").sort_values("class_id")
        return pairs["class_name"].tolist()

    def class_ids(self, names: list[str]) -> np.ndarray:
        """class_ids of the given class names (e.g. one split); unknown names are an error."""
        lookup = {name: i for i, name in enumerate(self.class_names)}
        unknown = [n for n in names if n not in lookup]
        if unknown:
            raise DatasetError(f"classes {unknown[:5]} are not in the cache {self.directory}")
        return np.array([lookup[n] for n in names], dtype=np.int64)

    def in_memory(self) -> ImageCache:
        """A copy whose images live in RAM instead of the memory map."""
        return ImageCache(self.directory, np.array(self.images), self.index, self.labels, self.meta)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], verify: bool = True) -> ImageCache:
        """Open a cache folder, checking its format version, shapes and index and (``verify``)
        the checksum of ``images.npy`` (see ``verify_images``; skipped only by callers that
        read just the index, such as ``subspace-fsl split``)."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise CacheError(f"{meta_path} is missing: {directory} is not a complete cache")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise CacheError(f"{meta_path} is not valid JSON: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{meta_path}: format_version {meta.get('format_version')!r}, "
                f"this version reads {FORMAT_VERSION}; rebuild the cache"
            )
        try:
            images = np.load(directory / "images.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot open {directory / 'images.npy'}: {exc}") from exc
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8:
            raise CacheError(
                f"{directory / 'images.npy'} has shape {images.shape} {images.dtype}, "
                f"meta.json says {meta['shape']} uint8"
            )
        try:
            index = pd.read_csv(directory / "index.csv", dtype={"path": str, "class_name": str})
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot read {directory / 'index.csv'}: {exc}") from exc
        if list(index.columns) != INDEX_COLUMNS or len(index) != images.shape[0]:
            raise CacheError(
                f"{directory / 'index.csv'} has columns {list(index.columns)} and "
                f"{len(index)} rows; expected {INDEX_COLUMNS} and {images.shape[0]}"
            )
        if verify:
            verify_images(directory, meta.get("images_sha256"))
        labels = index["class_id"].to_numpy(dtype=np.int64)
        return cls(directory, images, index, labels, meta)


# --- raw data -> cache for a configuration -----------------------------------------------


def _paths(cfg: Mapping[str, Any]) -> tuple[Path, Path]:
    from subspace_fsl import paths

    return paths.raw_root(cfg), paths.cache_dir(cfg)


def prepare_raw(
    cfg: Mapping[str, Any], raw_root: str | os.PathLike[str] | None = None, progress: bool = True
) -> tuple[pd.DataFrame, Path, Any]:
    """Make the raw data of ``cfg`` available; return (records, data root, stamp extra)."""
    from subspace_fsl.data import cub, download, sources, synth

    dataset = cfg["dataset"]
    root = Path(raw_root) if raw_root is not None else _paths(cfg)[0]
    source = dataset["source"]
    if source == "synthetic":
        s = dataset["synthetic"]
        wanted = (s["classes"], s["images_per_class"], s["size"], s["seed"])
        if not synth.is_generated(root, *wanted):
            if root.exists():
                if not (root / "synth.json").is_file():
                    raise DatasetError(
                        f"{root} exists but is not a synthetic data set "
                        "(no synth.json); remove it or set dataset.root"
                    )
                log.warning("synthetic data in %s has other settings; generating it again", root)
                shutil.rmtree(root)
            synth.generate(root, *wanted, progress=progress)
        return cub.read_cub(root, dataset["crop_to_bbox"]), root, synth.settings(*wanted)
    spec = sources.get_source(source)
    if dataset["crop_to_bbox"] and not spec.boxes:
        raise DatasetError(f"dataset.crop_to_bbox needs bounding boxes; source {source} has none")
    if spec.downloads and not spec.is_root(root):
        if root.exists():
            raise DatasetError(
                f"{root} exists but does not hold source {source}'s layout ({spec.layout}); "
                "fix dataset.root, or remove the folder to download the data set again"
            )
        remotes = sources.remote_files(source, dataset)
        archives = [
            download.download(
                r.url, Path(cfg["data_dir"]) / r.name, r.md5, r.size_bytes, progress=progress
            )
            for r in remotes
        ]
        try:
            download.extract(archives, root, spec.is_root, spec.layout)
        except DatasetError as exc:  # refused: never offered again as usable archives
            asides = []
            for archive in archives:
                asides.append(archive.with_name(archive.name + ".bad"))
                os.replace(archive, asides[-1])
                download.record_path(archive).unlink(missing_ok=True)
            where = ", ".join(str(a) for a in asides)
            raise DatasetError(f"{exc}; moved aside to {where}") from exc
    return spec.read(root, dataset["crop_to_bbox"]), root, sources.annotations_digest(spec, root)


def prepare(
    cfg: Mapping[str, Any],
    raw_root: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Raw data (download/extract or synthesise) -> image cache for ``cfg``; returns the cache
    folder. A cache whose stamp differs from the expected one is rebuilt, never used."""
    dataset = cfg["dataset"]
    cache_dir = Path(cache_dir) if cache_dir is not None else _paths(cfg)[1]
    records, root, extra = prepare_raw(cfg, raw_root, progress)
    source = source_stamp(records, root, extra)
    expected = cache_stamp(
        source, dataset["image_size"], dataset["resize"], dataset["crop_to_bbox"]
    )
    if cache_dir.exists():
        try:
            existing = ImageCache.open(cache_dir)
        except CacheError as exc:
            log.warning("rebuilding the cache %s: %s", cache_dir, exc)
        else:
            if existing.stamp == expected:
                log.info("cache %s is up to date (stamp %s)", cache_dir, expected[:12])
                return cache_dir
            log.warning(
                "rebuilding the stale cache %s: stamp %s != expected %s (source data or "
                "preprocessing settings changed)",
                cache_dir,
                existing.stamp[:12],
                expected[:12],
            )
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    return build_cache(
        records,
        cache_dir,
        dataset["image_size"],
        dataset["resize"],
        dataset["crop_to_bbox"],
        source,
        root=root,
        workers=workers,
        progress=progress,
    )


# --- part annotations (explain): additive, see docs/explain.md ---------------------------

PARTS_FILE = "parts.csv"  # row (cache row), image_id, part_id, part_name, x, y, visible


def transform_points(
    xy: np.ndarray,
    full_size: tuple[int, int],
    image_size: int,
    resize: int | None,
    bbox: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Original-image pixel coordinates [n, 2] -> the cached image's, with the geometry of
    ``images.load_image``: crop to the (clipped, rounded) bbox, scale the shorter side to
    ``resize``, centre-crop ``image_size``: x' = (x - x0) * new_w / w - left (same for y).

    JPEG draft decoding only changes where the crop box is rounded (by < 1 decoded pixel),
    which is ignored here."""
    resize = resize or image_size
    width, height = full_size
    if bbox is None:
        x0, y0, x1, y1 = 0, 0, width, height
    else:
        bx, by, bw, bh = (float(v) for v in bbox)
        bx0, by0 = max(0.0, bx), max(0.0, by)
        bx1, by1 = min(float(width), bx + bw), min(float(height), by + bh)
        x0, y0, x1, y1 = round(bx0), round(by0), round(bx1), round(by1)
    w, h = x1 - x0, y1 - y0
    scale = resize / min(w, h)
    new_w, new_h = max(resize, round(w * scale)), max(resize, round(h * scale))
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack(
        [(xy[:, 0] - x0) * new_w / w - left, (xy[:, 1] - y0) * new_h / h - top], axis=1
    )


def write_cache_parts(
    out_dir: Path,
    records: pd.DataFrame,
    root: str | os.PathLike[str],
    image_size: int,
    resize: int | None,
    crop_to_bbox: bool,
) -> Path | None:
    """Write ``parts.csv`` (part locations in cached-image pixels) when the data root has
    CUB's part files; a part that the crop leaves outside the image becomes invisible."""
    from PIL import Image

    from subspace_fsl.data.cub import read_parts

    parts = read_parts(root)
    if parts is None:
        return None
    rows = pd.DataFrame({"row": np.arange(len(records)),
                         "image_id": records["image_id"].to_numpy(dtype=np.int64)})
    table = parts.merge(rows, on="image_id", how="inner")
    out = []
    for row, group in table.groupby("row", sort=True):
        record = records.iloc[int(row)]
        with Image.open(record["path"]) as image:  # reads the header only
            full_size = image.size
        bbox = tuple(record[["x", "y", "w", "h"]]) if crop_to_bbox else None
        xy = transform_points(group[["x", "y"]].to_numpy(), full_size, image_size, resize, bbox)
        inside = (xy >= 0).all(axis=1) & (xy < image_size).all(axis=1)
        out.append(group.assign(x=xy[:, 0], y=xy[:, 1],
                                visible=group["visible"].to_numpy() * inside))
    columns = ["row", "image_id", "part_id", "part_name", "x", "y", "visible"]
    result = pd.concat(out) if out else pd.DataFrame(columns=columns)
    path = Path(out_dir) / PARTS_FILE
    result[columns].to_csv(path, index=False, float_format="%.2f")
    return path


def read_cache_parts(directory: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The cache's ``parts.csv`` (see :func:`write_cache_parts`), or None when absent."""
    path = Path(directory) / PARTS_FILE
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"part_name": str})
