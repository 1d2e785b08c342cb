"""What verifying an image cache's checksum costs (``ImageCache.open``, docs/data.md).

Writes a cache of ``--images`` random uint8 images (default CUB's 11,788 at 84 px, 249.5 MB)
in the cache format, then times ``ImageCache.open``: hashing the file with it in the page
cache, hashing it after dropping it from there (``posix_fadvise(DONTNEED)``), an open whose
``images.npy.verified`` record matches the file (no hash), and an open without verification.

``python -m subspace_fsl.bench checksum [--images 11788] [--size 84] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from subspace_fsl.bench.memory import CUB_CLASSES, CUB_IMAGES, write_random_cache


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(cache_dir: Path, repeat: int) -> dict[str, float]:
    """Median seconds of each kind of open over ``repeat`` tries."""
    from subspace_fsl.data.cache import IMAGES, VERIFIED, ImageCache

    times: dict[str, list[float]] = {"hash": [], "hash_cold": [], "record": [], "none": []}
    for _ in range(repeat):
        (cache_dir / VERIFIED).unlink(missing_ok=True)
        times["hash"].append(_seconds(lambda: ImageCache.open(cache_dir)))
        times["record"].append(_seconds(lambda: ImageCache.open(cache_dir)))
        times["none"].append(_seconds(lambda: ImageCache.open(cache_dir, verify=False)))
        (cache_dir / VERIFIED).unlink()
        _drop_from_page_cache(cache_dir / IMAGES)
        times["hash_cold"].append(_seconds(lambda: ImageCache.open(cache_dir)))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subspace_fsl.bench checksum")
    parser.add_argument("--images", type=int, default=CUB_IMAGES)
    parser.add_argument("--classes", type=int, default=CUB_CLASSES)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        cache_dir = write_random_cache(Path(tmp) / "cache", args.images, args.classes, args.size)
        megabytes = (cache_dir / "images.npy").stat().st_size / 1e6
        t = measure(cache_dir, args.repeat)
    print(
        f"{args.images} images at {args.size} px ({megabytes:.1f} MB), median of "
        f"{args.repeat}: hash {t['hash']:.2f} s in the page cache, {t['hash_cold']:.2f} s "
        f"dropped from it; open with a matching record {1000 * t['record']:.1f} ms, "
        f"without verification {1000 * t['none']:.1f} ms"
    )
    return 0
