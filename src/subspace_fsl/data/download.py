"""Fetching and unpacking a data set's published files, shared by every source.

``download`` (resumable over HTTP Range, checksum- and size-verified, atomic rename, a
``<file>.source.json`` record of what was checked) fetches one file from http(s):// or
file://; ``extract`` unpacks one or more of them (tar archives through tarfile's ``data``
filter; plain files such as ``.mat`` lists are copied) into a temporary sibling folder and
renames the one folder that holds the data set's layout to its destination, so a truncated
or refused archive leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from subspace_fsl.config import atomic_write_text
from subspace_fsl.data.records import DatasetError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class ChecksumError(ValueError):
    """A downloaded or given archive whose MD5 (or size) is not the expected one."""


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


def is_tar_name(path: str | os.PathLike[str]) -> bool:
    """True for a file named like a tar archive (``.tar``, ``.tgz``, ``.tar.gz``, ...)."""
    return str(path).lower().endswith(TAR_SUFFIXES)


def extract(
    archives: Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    is_root: Callable[[Path], bool],
    layout: str,
) -> Path:
    """Unpack ``archives`` together and move the folder holding the layout to ``dest``.

    Tar archives are extracted with tarfile's ``data`` filter (it refuses absolute paths,
    ``..`` components and links that leave the target); other files are copied as they are.
    The layout's folder is the shallowest folder ``is_root`` accepts (``layout`` describes it
    in the error when there is none, or more than one at that depth). Everything happens in a
    temporary sibling folder that is renamed only once every archive has been read.
    """
    dest = Path(dest)
    paths = [Path(a) for a in archives]
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it to extract {paths[0]} again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extract-"))
    try:
        for archive in paths:
            if not is_tar_name(archive):
                shutil.copyfile(archive, tmp / archive.name)
                continue
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise DatasetError(
                    f"cannot extract {archive} (truncated or not a tar archive?): {exc}"
                ) from exc
        found = sorted(p for p in [tmp, *tmp.rglob("*")] if p.is_dir() and is_root(p))
        depths = [len(p.relative_to(tmp).parts) for p in found]
        shallowest = [p for p, d in zip(found, depths, strict=True) if d == min(depths, default=0)]
        names = ", ".join(a.name for a in paths)
        if len(shallowest) != 1:
            raise DatasetError(
                f"{names} should hold exactly one folder with {layout}, found {len(shallowest)}"
            )
        os.replace(shallowest[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def archive_name(url: str) -> str:
    """File name of the file at ``url`` (``CUB_200_2011.tgz``)."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"dataset.url {url!r} does not end in a file name")
    return name
