"""CUB-200-2011: download (resumable, verified), safe extraction, and the list-file parser.

``read_cub`` also reads the synthetic data set (``data.synth`` writes CUB's exact layout).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from tqdm import tqdm

from subspace_fsl.config import atomic_write_text, make_temp_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20
COLUMNS = ["image_id", "path", "class_id", "class_name", "x", "y", "w", "h"]


class ChecksumError(ValueError):
    """A downloaded or given archive whose MD5 (or size) is not the expected one."""


class DatasetError(ValueError):
    """A data set folder whose list files or images are inconsistent; names the file."""


# --- download ----------------------------------------------------------------------------


def md5sum(path: str | os.PathLike[str]) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _set_aside(path: Path, reason: str, dest: Path) -> Path:
    """Rename a bad file to ``<dest>.bad`` (kept for inspection, never used as valid)."""
    aside = dest.with_name(dest.name + ".bad")
    os.replace(path, aside)
    log.warning("%s: %s; moved aside to %s", path, reason, aside)
    return aside


def _verify(path: Path, md5: str | None, size_bytes: int | None, dest: Path) -> None:
    """Raise ``ChecksumError`` (after moving the file aside) unless size and MD5 match."""
    size = path.stat().st_size
    if size_bytes is not None and size != size_bytes:
        aside = _set_aside(path, f"size {size} != expected {size_bytes}", dest)
        raise ChecksumError(
            f"{path} has {size} bytes, expected {size_bytes}; moved aside to {aside}"
        )
    if md5 is not None:
        actual = md5sum(path)
        if actual != md5.lower():
            aside = _set_aside(path, f"md5 {actual} != expected {md5}", dest)
            raise ChecksumError(f"{path} has MD5 {actual}, expected {md5}; moved aside to {aside}")


def record_path(dest: str | os.PathLike[str]) -> Path:
    """``<archive>.source.json``: what was checked about the archive, written beside it."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".source.json")


def _write_record(dest: Path, url: str, md5: str | None, size_bytes: int | None) -> None:
    """Record the URL, size and MD5 of ``dest`` and which of them matched an expected value
    (``dataset.md5`` / ``dataset.size_bytes``); null expected values mean not verified."""
    record = {
        "url": url,
        "size": dest.stat().st_size,
        "md5": md5sum(dest),
        "md5_verified": md5 is not None,
        "size_verified": size_bytes is not None,
    }
    atomic_write_text(record_path(dest), json.dumps(record, indent=1) + "\n")


def _reusable(dest: Path, url: str, md5: str | None, size_bytes: int | None) -> str | None:
    """Why an existing ``dest`` may be used (a log phrase), or None: download it again.

    With ``md5`` the file is checked against it (the URL it came from does not matter);
    without, only a file this code downloaded from the same ``url`` and unchanged since (its
    size and MD5 equal the record's) is used, and it is called unverified."""
    if md5 is not None:
        try:
            _verify(dest, md5, size_bytes, dest)
        except ChecksumError as exc:
            log.warning("%s; downloading it again", exc)
            return None
        _write_record(dest, url, md5, size_bytes)
        return f"using the verified archive {dest} (MD5 {md5.lower()} as dataset.md5 says)"
    try:
        record = json.loads(record_path(dest).read_text())
    except (OSError, ValueError):
        record = None
    reason = None
    if record is None:
        reason = f"it has no download record ({record_path(dest).name}), dataset.md5 is null"
    elif record.get("url") != url:
        reason = f"it was downloaded from {record.get('url')}, dataset.url is now {url}"
    elif record.get("size") != dest.stat().st_size or record.get("md5") != md5sum(dest):
        reason = "it changed since it was downloaded"
    elif size_bytes is not None and record["size"] != size_bytes:
        reason = f"it has {record['size']} bytes, dataset.size_bytes is {size_bytes}"
    if reason is not None:
        aside = _set_aside(dest, reason, dest)
        log.warning("not using %s (moved aside to %s); downloading %s again", dest, aside, url)
        return None
    return (
        f"using the archive {dest}, downloaded from {url} and unchanged since (NOT verified: "
        f"dataset.md5 is null; its MD5 is {record['md5']})"
    )


def download(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None,
    size_bytes: int | None = None,
    *,
    retries: int = 3,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` (http(s):// or file://) to the file ``dest`` and verify it; return ``dest``.

    An existing ``dest`` is reused only as ``_reusable`` allows (a bad one is moved aside to
    ``.bad`` and fetched again). Bytes go to ``dest.part``, which an interrupted download
    leaves behind and the next attempt continues with an HTTP Range request (``retries``
    attempts per call) when it came from the same URL (``.part.url``); only a complete,
    verified file is renamed to ``dest``, and ``dest.source.json`` records its URL, size and
    MD5 and whether they were verified. A checksum mismatch after the download raises
    ``ChecksumError`` and moves the file aside.
    """
    dest = Path(dest)
    if dest.is_file():
        reuse = _reusable(dest, url, md5, size_bytes)
        if reuse is not None:
            log.info("%s", reuse)
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"dataset.url {url!r}: only http(s):// and file:// URLs are supported")
    part_url = part.with_name(part.name + ".url")
    if part.exists() and (not part_url.is_file() or part_url.read_text() != url):
        log.warning("%s is not a part of %s; starting again", part, url)
        part.unlink()
    atomic_write_text(part_url, url)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, size_bytes, progress, timeout)
            break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 429:
                raise ConnectionError(
                    f"cannot download {url}: HTTP {exc.code} {exc.reason}"
                ) from exc
            if isinstance(exc, FileNotFoundError) or attempt == retries:
                received = part.stat().st_size if part.exists() else 0
                raise ConnectionError(
                    f"download of {url} failed ({exc}); {part} keeps the {received} bytes "
                    "received, run again to resume"
                ) from exc
            log.warning(
                "download of %s interrupted (%s); resuming (attempt %d of %d)",
                url,
                exc,
                attempt + 2,
                retries + 1,
            )
            time.sleep(min(2**attempt, 10) * 0.1)
    _verify(part, md5, size_bytes, dest)
    record_path(dest).unlink(missing_ok=True)  # the old record describes the old file
    os.replace(part, dest)
    part_url.unlink(missing_ok=True)
    _write_record(dest, url, md5, size_bytes)
    if md5 is None:
        log.warning("downloaded %s from %s; NOT verified (dataset.md5 is null)", dest, url)
    return dest


def _fetch(url: str, part: Path, size_bytes: int | None, progress: bool, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``part`` (Range request when it is non-empty)."""
    have = part.stat().st_size if part.exists() else 0
    if size_bytes is not None and have > size_bytes:
        log.warning("%s is larger than the expected %d bytes; starting again", part, size_bytes)
        part.unlink()
        have = 0
    if size_bytes is not None and have == size_bytes:
        return
    if urllib.parse.urlparse(url).scheme == "file":
        source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        total = source.stat().st_size  # FileNotFoundError names the path
        have = have if have <= total else 0  # a longer .part is not a prefix: start again
        with open(source, "rb") as response:
            response.seek(have)
            _copy(response, part, "ab" if have else "wb", have, size_bytes or total, progress)
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: the part is already complete
            return
        raise
    with response:
        if have and response.status != 206:  # the server ignored the Range header
            log.warning("%s does not support resuming; starting again", url)
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        _copy(response, part, "ab" if have else "wb", have, size_bytes or expected, progress)
    if expected is not None and part.stat().st_size < expected:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {expected} bytes")


def _copy(
    response: BinaryIO, part: Path, mode: str, have: int, total: int | None, progress: bool
) -> None:
    with (
        open(part, mode) as handle,
        tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            desc=part.name,
            disable=not progress,
        ) as bar,
    ):
        try:
            while block := response.read(CHUNK):
                handle.write(block)
                bar.update(len(block))
        finally:  # whatever arrived is kept for the next attempt
            handle.flush()
            os.fsync(handle.fileno())


# --- extraction --------------------------------------------------------------------------


def extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract ``archive`` safely and move the folder holding ``images.txt`` to ``dest``.

    tarfile's ``data`` filter refuses absolute paths, ``..`` components and links that leave
    the target; the archive goes to a temporary sibling folder that is renamed only when the
    whole archive has been read, so a truncated archive leaves nothing behind.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it to extract {archive} again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest.parent, f".{dest.name}.extract-")
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise DatasetError(
                f"cannot extract {archive} (truncated or not a tar archive?): {exc}"
            ) from exc
        found = sorted(p.parent for p in tmp.rglob("images.txt"))
        if len(found) != 1:
            raise DatasetError(
                f"{archive} should hold exactly one folder with images.txt, found {len(found)}"
            )
        os.replace(found[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --- parsing -----------------------------------------------------------------------------


def _read_table(path: Path, names: list[str], required: bool = True) -> pd.DataFrame:
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


def read_cub(root: str | os.PathLike[str], crop_to_bbox: bool = False) -> pd.DataFrame:
    """One row per image: ``image_id, path (absolute), class_id (0-based), class_name, x, y, w, h``.

    Reads ``images.txt``, ``classes.txt``, ``image_class_labels.txt`` and, only when
    ``crop_to_bbox``, ``bounding_boxes.txt`` (bbox columns are NaN otherwise). Every listed
    image must exist; every image needs a label (and a box when cropping).
    """
    root = Path(root).resolve()
    images = _read_table(root / "images.txt", ["image_id", "path"])
    classes = _read_table(root / "classes.txt", ["class_id", "class_name"])
    labels = _read_table(root / "image_class_labels.txt", ["image_id", "class_id"])
    if images.empty:
        raise DatasetError(f"{root / 'images.txt'} lists no images")
    classes = classes.sort_values("class_id").reset_index(drop=True)
    unknown = sorted(set(labels["class_id"]) - set(classes["class_id"]))
    if unknown:
        raise DatasetError(
            f"{root / 'image_class_labels.txt'}: class ids {unknown[:5]} are not in classes.txt"
        )
    table = images.merge(labels, on="image_id", how="left", validate="one_to_one")
    unlabelled = table.loc[table["class_id"].isna(), "image_id"]
    if len(unlabelled):
        raise DatasetError(
            f"{root / 'image_class_labels.txt'} has no label for image_id "
            f"{int(unlabelled.iloc[0])} ({len(unlabelled)} images unlabelled)"
        )
    position = {cid: i for i, cid in enumerate(classes["class_id"])}
    table["class_name"] = table["class_id"].map(
        dict(zip(classes["class_id"], classes["class_name"], strict=True))
    )
    table["class_id"] = table["class_id"].map(position).astype(np.int64)
    table["path"] = [str(root / "images" / p) for p in table["path"]]
    missing = [p for p in table["path"] if not os.path.isfile(p)]
    if missing:
        raise DatasetError(
            f"{root / 'images.txt'} lists {len(missing)} missing image file(s), first: {missing[0]}"
        )
    if crop_to_bbox:
        boxes = _read_table(root / "bounding_boxes.txt", ["image_id", "x", "y", "w", "h"])
        table = table.merge(boxes, on="image_id", how="left", validate="one_to_one")
        boxless = table.loc[table["w"].isna(), "image_id"]
        if len(boxless):
            raise DatasetError(
                f"{root / 'bounding_boxes.txt'} has no box for image_id {int(boxless.iloc[0])}"
            )
        bad = table.loc[(table["w"] <= 0) | (table["h"] <= 0), "image_id"]
        if len(bad):
            raise DatasetError(
                f"{root / 'bounding_boxes.txt'}: empty box for image_id {int(bad.iloc[0])}"
            )
    else:
        for column in ("x", "y", "w", "h"):
            table[column] = np.nan
    empty = sorted(set(range(len(classes))) - set(table["class_id"]))
    if empty:
        raise DatasetError(
            f"{root / 'classes.txt'}: class {classes['class_name'][empty[0]]!r} has no images"
        )
    return table[COLUMNS].sort_values("image_id").reset_index(drop=True)


def is_dataset_root(path: str | os.PathLike[str]) -> bool:
    """True for a folder in CUB's layout (already extracted or synthesised)."""
    return (Path(path) / "images.txt").is_file()


def archive_name(url: str) -> str:
    """File name of the archive at ``url`` (``CUB_200_2011.tgz``)."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"dataset.url {url!r} does not end in a file name")
    return name


# --- part annotations (explain) ----------------------------------------------------------
# Additive: CUB-200-2011 ships parts/parts.txt ("part_id name", 15 parts) and
# parts/part_locs.txt ("image_id part_id x y visible", pixels of the original image); the
# synthetic generator writes the same two files for the parts it draws.

PART_COLUMNS = ["image_id", "part_id", "part_name", "x", "y", "visible"]


def read_parts(root: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The part annotations of a data set in CUB's layout, or None when it has none.

    One row per (image, part): ``image_id, part_id, part_name, x, y, visible`` (0/1), in the
    original image's pixel coordinates. A malformed line or an unknown part id is a
    ``DatasetError`` naming the file.
    """
    folder = Path(root) / "parts"
    names_path, locs_path = folder / "parts.txt", folder / "part_locs.txt"
    if not names_path.is_file() and not locs_path.is_file():
        return None
    names = _read_table(names_path, ["class_id", "part_name"]).rename(
        columns={"class_id": "part_id"}
    )
    locs = _read_part_locs(locs_path)
    unknown = sorted(set(locs["part_id"]) - set(names["part_id"]))
    if unknown:
        raise DatasetError(f"{locs_path}: part ids {unknown[:5]} are not in {names_path}")
    table = locs.merge(names, on="part_id", how="left")
    return table[PART_COLUMNS].sort_values(["image_id", "part_id"]).reset_index(drop=True)


def _read_part_locs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        table = pd.read_csv(
            path, sep=r"\s+", header=None, names=["image_id", "part_id", "x", "y", "visible"],
            dtype={"image_id": np.int64, "part_id": np.int64, "x": np.float64,
                   "y": np.float64, "visible": np.int64},
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: expected lines 'image_id part_id x y visible': {exc}") from exc
    if table.isna().any().any() or not table["visible"].isin([0, 1]).all():
        raise DatasetError(f"{path}: every line needs image_id part_id x y visible (0 or 1)")
    duplicated = table.duplicated(["image_id", "part_id"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise DatasetError(
            f"{path}: image_id {int(row['image_id'])} part_id {int(row['part_id'])} appears twice"
        )
    return table
