"""CUB-200-2011 download, extraction and parsing, on small archives built here."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from subspace_fsl.data.cub import ChecksumError, DatasetError, download, extract, read_cub


def make_cub(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    """A CUB-layout folder with small JPEGs of varying size and real-looking list files."""
    (root / "images").mkdir(parents=True)
    images, labels, boxes, names = [], [], [], []
    image_id = 0
    for c in range(1, classes + 1):
        name = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {name}\n")
        (root / "images" / name).mkdir()
        for j in range(per_class):
            image_id += 1
            relative = f"{name}/Bird_{c}_{j:04d}.jpg"
            Image.new("RGB", (60 + 10 * j, 40), (40 * c, 20, 200)).save(root / "images" / relative)
            images.append(f"{image_id} {relative}\n")
            labels.append(f"{image_id} {c}\n")
            boxes.append(f"{image_id} 5.0 4.0 30.0 20.0\n")
    (root / "classes.txt").write_text("".join(names))
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    (root / "bounding_boxes.txt").write_text("".join(boxes))
    return root


def make_archive(tmp_path: Path) -> tuple[Path, str]:
    """CUB_200_2011.tgz laid out like the real one (a top-level file + the data folder)."""
    make_cub(tmp_path / "src" / "CUB_200_2011")
    (tmp_path / "src" / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "attributes.txt", arcname="attributes.txt")
        tar.add(tmp_path / "src" / "CUB_200_2011", arcname="CUB_200_2011")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_file_url_download_extract_and_parse(tmp_path: Path) -> None:
    archive, md5 = make_archive(tmp_path)
    dest = tmp_path / "data" / "CUB_200_2011.tgz"
    got = download(archive.as_uri(), dest, md5, archive.stat().st_size, progress=False)
    assert got == dest and dest.read_bytes() == archive.read_bytes()
    assert not dest.with_name(dest.name + ".part").exists()
    # an already-downloaded, valid archive is reused without reading the URL again
    assert download("file:///does/not/exist.tgz", dest, md5, progress=False) == dest

    root = extract(dest, tmp_path / "data" / "cub")
    assert (root / "images.txt").is_file()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]
    table = read_cub(root)
    assert list(table.columns) == ["image_id", "path", "class_id", "class_name", "x", "y", "w", "h"]
    assert table["class_id"].tolist() == [0, 0, 1, 1, 2, 2]
    assert table["class_name"].iloc[2] == "002.Bird_2"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    assert table["x"].isna().all()
    cropped = read_cub(root, crop_to_bbox=True)
    assert cropped[["x", "y", "w", "h"]].iloc[0].tolist() == [5.0, 4.0, 30.0, 20.0]


def test_checksum_mismatch_moves_the_file_aside(tmp_path: Path) -> None:
    archive, _ = make_archive(tmp_path)
    dest = tmp_path / "dl" / "CUB_200_2011.tgz"
    with pytest.raises(ChecksumError, match="MD5"):
        download(archive.as_uri(), dest, "0" * 32, progress=False)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    assert dest.with_name(dest.name + ".bad").is_file()
    with pytest.raises(ChecksumError, match="bytes, expected 12"):
        download(archive.as_uri(), dest, None, size_bytes=12, progress=False)
    assert not dest.exists()


def test_a_corrupt_existing_archive_is_fetched_again(tmp_path: Path) -> None:
    archive, md5 = make_archive(tmp_path)
    dest = tmp_path / "CUB_copy.tgz"
    dest.write_bytes(b"garbage")
    download(archive.as_uri(), dest, md5, progress=False)
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5
    assert dest.with_name(dest.name + ".bad").read_bytes() == b"garbage"


class RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` with Range support; the first ``cut`` responses stop halfway."""

    payload = b""
    cut = 0
    requests: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        cls = type(self)
        cls.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
        body = cls.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(cls.payload) - 1}/{len(cls.payload)}"
            )
        self.end_headers()
        if cls.cut > 0:
            cls.cut -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeServer.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/CUB_200_2011.tgz"
    httpd.shutdown()
    httpd.server_close()


def test_http_download_resumes_after_an_interrupt(tmp_path: Path, server: str) -> None:
    payload = np.random.default_rng(0).bytes(300_000)
    RangeServer.payload, RangeServer.cut = payload, 1
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "a.tgz"
    part = tmp_path / "a.tgz.part"
    # no retries: the interrupted download fails and keeps what it received
    with pytest.raises(ConnectionError, match="run again to resume"):
        download(server, dest, md5, len(payload), retries=0, progress=False)
    assert 0 < part.stat().st_size < len(payload) and not dest.exists()
    half = part.stat().st_size
    download(server, dest, md5, len(payload), retries=0, progress=False)
    assert dest.read_bytes() == payload and not part.exists()
    assert RangeServer.requests == [None, f"bytes={half}-"]


def test_http_download_retries_within_one_call(tmp_path: Path, server: str) -> None:
    payload = np.random.default_rng(1).bytes(200_000)
    RangeServer.payload, RangeServer.cut = payload, 2
    dest = download(server, tmp_path / "b.tgz", hashlib.md5(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload
    assert len(RangeServer.requests) == 3 and RangeServer.requests[0] is None
    assert all(r is not None and r.startswith("bytes=") for r in RangeServer.requests[1:])


def test_truncated_archive_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    archive, _ = make_archive(tmp_path)
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"truncated\.tgz"):
        extract(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_extraction_refuses_path_traversal_and_outside_links(tmp_path: Path) -> None:
    for name, member in (("traversal", "../evil.txt"), ("absolute", "/tmp/evil.txt")):
        archive = tmp_path / f"{name}.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(member)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        with pytest.raises(DatasetError, match=name):
            extract(archive, tmp_path / "out")
    archive = tmp_path / "link.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("data/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DatasetError, match="link"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    root = make_cub(tmp_path / "cub")
    missing = root / "images" / "002.Bird_2" / "Bird_2_0001.jpg"
    missing.unlink()
    with pytest.raises(DatasetError, match=r"Bird_2_0001\.jpg"):
        read_cub(root)


def test_list_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    root = make_cub(tmp_path / "cub")
    (root / "bounding_boxes.txt").unlink()
    read_cub(root)  # boxes are needed only when cropping
    with pytest.raises(DatasetError, match=r"bounding_boxes\.txt is missing"):
        read_cub(root, crop_to_bbox=True)
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n5 3\n")
    with pytest.raises(DatasetError, match="no label for image_id 6"):
        read_cub(root)
    (root / "image_class_labels.txt").write_text("1 1\n2 one\n")
    with pytest.raises(DatasetError, match=r"image_class_labels\.txt: column class_id"):
        read_cub(root)
    (root / "images.txt").write_text("1\n")
    with pytest.raises(DatasetError, match=r"images.txt, line 1: expected 2 fields"):
        read_cub(root)


def test_prepare_cub_from_a_file_url_then_offline(tmp_path: Path) -> None:
    from subspace_fsl.config import load_config
    from subspace_fsl.data.cache import ImageCache, prepare

    archive, md5 = make_archive(tmp_path)
    settings = [
        "dataset.source=cub",
        "dataset.name=cub",
        f"dataset.url={archive.as_uri()}",
        f"dataset.md5={md5}",
        f"dataset.size_bytes={archive.stat().st_size}",
        f"data_dir={tmp_path / 'data'}",
        f"results_dir={tmp_path / 'results'}",
        "dataset.image_size=16",
        "dataset.crop_to_bbox=true",
    ]
    cache = ImageCache.open(prepare(load_config(None, settings), workers=1, progress=False))
    assert cache.images.shape == (6, 3, 16, 16)
    assert (tmp_path / "data" / "CUB_200_2011.tgz").is_file()
    assert (tmp_path / "data" / "cub" / "images.txt").is_file()
    assert cache.class_names == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    # offline: the archive is gone and the URL is unreachable; the extracted folder is used
    archive.unlink()
    (tmp_path / "data" / "CUB_200_2011.tgz").unlink()
    offline = load_config(None, [*settings, "dataset.url=file:///nowhere/CUB_200_2011.tgz"])
    assert prepare(offline, workers=1, progress=False) == cache.directory


def test_without_md5_only_an_unchanged_archive_from_the_same_url_is_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    from subspace_fsl.data.cub import record_path

    caplog.set_level(logging.INFO)
    first, _ = make_archive(tmp_path / "a")
    other = tmp_path / "b" / "CUB_200_2011.tgz"
    other.parent.mkdir()
    other.write_bytes(first.read_bytes() + b"\0" * 1024)  # another file, same name
    dest = tmp_path / "data" / "CUB_200_2011.tgz"
    download(first.as_uri(), dest, None, progress=False)
    record = json.loads(record_path(dest).read_text())
    assert record["url"] == first.as_uri() and record["md5_verified"] is False
    assert record["md5"] == hashlib.md5(first.read_bytes()).hexdigest()
    caplog.clear()
    download(first.as_uri(), dest, None, progress=False)
    assert "NOT verified" in caplog.text and "using the verified" not in caplog.text
    # dataset.url changed: the old file is not the one asked for; it is fetched from the URL
    caplog.clear()
    download(other.as_uri(), dest, None, progress=False)
    assert dest.read_bytes() == other.read_bytes()
    assert "it was downloaded from" in caplog.text and "using the" not in caplog.text
    # changed after the download (same URL): fetched again
    dest.write_bytes(b"x" * dest.stat().st_size)
    download(other.as_uri(), dest, None, progress=False)
    assert dest.read_bytes() == other.read_bytes()
    # a file put there by hand (no record) is never called verified
    record_path(dest).unlink()
    caplog.clear()
    download(other.as_uri(), dest, None, progress=False)
    assert "no download record" in caplog.text and "using the" not in caplog.text


def test_an_archive_refused_once_is_not_reused_after_the_url_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from subspace_fsl.config import load_config
    from subspace_fsl.data.cache import ImageCache, prepare

    good, _ = make_archive(tmp_path / "good")
    wrong = tmp_path / "wrong" / "CUB_200_2011.tgz"
    wrong.parent.mkdir()
    wrong.write_bytes(b"<html>not the archive</html>")
    settings = [
        "dataset.source=cub", "dataset.name=cub", "dataset.md5=null",
        "dataset.size_bytes=null", f"data_dir={tmp_path / 'data'}",
        f"results_dir={tmp_path / 'results'}", "dataset.image_size=16",
    ]
    with pytest.raises(DatasetError, match=r"(?s)cannot extract .* moved aside"):
        prepare(load_config(None, [*settings, f"dataset.url={wrong.as_uri()}"]),
                workers=1, progress=False)
    caplog.set_level(logging.INFO)
    fixed = load_config(None, [*settings, f"dataset.url={good.as_uri()}"])
    cache = ImageCache.open(prepare(fixed, workers=1, progress=False))
    assert "using the verified archive" not in caplog.text
    assert cache.class_names == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    assert (tmp_path / "data" / "CUB_200_2011.tgz").read_bytes() == good.read_bytes()
