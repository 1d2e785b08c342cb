"""Memory benchmark: resident memory while training on a CUB-sized image cache.

Writes a cache of ``--images`` random uint8 images (default CUB's 11,788 at 84 px, 250 MB;
the pixel values do not matter for memory) in the cache format, trains the multi-subspace
head (S=4, d=64) on a Conv-4 for ``--episodes`` episodes drawn from all of it, and prints
the process's peak resident memory (VmHWM) and, at the end, its private (anonymous) and
file-backed resident memory.

The cache is memory-mapped, so the pages it reads count as file-backed: they sit in the OS
page cache once, shared by every process, job and worker that maps the same file, and are
never copied. ``--copy`` loads the cache into the process instead (what a per-worker or
per-job copy would cost); ``--compare`` runs both, each in a fresh process.

``python -m subspace_fsl.bench memory [--images 11788] [--episodes 20] [--compare]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from subspace_fsl.bench._common import episode_settings, every_class_data
from subspace_fsl.config import atomic_directory, atomic_write_text

CUB_IMAGES, CUB_CLASSES = 11_788, 200


def write_random_cache(
    directory: Path, n_images: int, n_classes: int, size: int, seed: int = 0
) -> Path:
    """A cache folder of random images, classes of (nearly) equal size, in the cache format."""
    from subspace_fsl.data.cache import cache_meta
    from subspace_fsl.provenance import file_digest

    rng = np.random.default_rng(seed)
    shape = (n_images, 3, size, size)
    with atomic_directory(directory) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, shape)
        for start in range(0, n_images, 1024):  # written in slices: never a full copy in RAM
            stop = min(start + 1024, n_images)
            images[start:stop] = rng.integers(0, 256, (stop - start, *shape[1:]), np.uint8)
        images.flush()
        del images
        class_ids = np.arange(n_images) * n_classes // n_images
        pd.DataFrame(
            {
                "image_id": np.arange(1, n_images + 1),
                "path": [f"images/{c:03d}/{i}.jpg" for i, c in enumerate(class_ids)],
                "class_id": class_ids,
                "class_name": [f"{c:03d}.class" for c in class_ids],
            }
        ).to_csv(tmp / "index.csv", index=False)
        meta = cache_meta(shape, size, False, "random", tmp, file_digest(tmp / "images.npy"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return directory


def process_memory() -> dict[str, float]:
    """MiB figures of /proc/self/status: peak (VmHWM), current, anonymous and file-backed RSS."""
    fields = {"VmHWM": "peak_rss", "VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    values: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in fields:
                values[fields[key]] = int(rest.split()[0]) / 1024  # kB -> MiB
    return values


def mapping_memory(path: Path) -> dict[str, float]:
    """MiB of a memory-mapped file resident in this process: total, shared, private
    (/proc/self/smaps; a page is shared while another process maps it too)."""
    totals = {"map_rss": 0.0, "map_shared": 0.0, "map_private": 0.0}
    keys = {
        "Rss": "map_rss",
        "Shared_Clean": "map_shared",
        "Shared_Dirty": "map_shared",
        "Private_Clean": "map_private",
        "Private_Dirty": "map_private",
    }
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(str(path))
            elif inside and first.rstrip(":") in keys:
                totals[keys[first.rstrip(":")]] += int(line.split()[1]) / 1024
    return totals


def measure(cache_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.episodes`` episodes on the cache in this process; memory figures in MiB."""
    from subspace_fsl.bench.engine import training_stepper
    from subspace_fsl.config import load_config
    from subspace_fsl.data.cache import ImageCache

    cache = ImageCache.open(cache_dir)
    data = every_class_data(cache)
    cfg = load_config(
        None,
        [
            f"dataset.image_size={args.size}",
            f"runtime.cache_on_device={str(args.copy).lower()}",
            f"runtime.malloc_tuning={str(not args.no_malloc_tuning).lower()}",
            *episode_settings("multisubspace", 5, 5, 16, "cpu", args.threads),
        ],
    )
    before = process_memory()
    step = training_stepper(cfg, data)  # builds the model and places (or maps) the cache
    set_up = process_memory()
    for _ in range(args.episodes):
        step()
    return {
        "images": int(cache.images.shape[0]),
        "cache_mib": cache.images.nbytes / 2**20,
        "cache_copied": bool(args.copy),
        "malloc_tuning": not args.no_malloc_tuning,
        "episodes": args.episodes,
        # private memory the set-up added: the model, plus the cache only when it is copied
        "set_up_private": set_up["rss_anon"] - before["rss_anon"],
        **process_memory(),
        **mapping_memory((cache_dir / "images.npy").resolve()),
    }


@contextlib.contextmanager
def cache_folder(args: argparse.Namespace) -> Iterator[Path]:
    """``--cache`` when given, else a random CUB-sized cache in a temporary folder."""
    if args.cache is not None:
        yield args.cache
        return
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        yield write_random_cache(Path(tmp) / "cache", args.images, args.classes, args.size)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.compare:
        results = compare(args)
    else:
        with cache_folder(args) as cache_dir:
            results = [measure(cache_dir, args)]
    for result in results:
        print(describe(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The memory-mapped and the copied cache, each trained on in a fresh process."""
    with cache_folder(args) as cache_dir:
        # this process maps the whole cache too, as a second job would: the pages a run
        # reads are then shared with it unless that run copies them
        shared = np.load(cache_dir / "images.npy", mmap_mode="r")
        int(shared[:, 0, 0, 0].sum())  # touch every image's first page
        results = [run_in_fresh_process(cache_dir, args, copy) for copy in (False, True)]
        del shared
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m subspace_fsl.bench memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--images", type=int, default=CUB_IMAGES)
    parser.add_argument("--classes", type=int, default=CUB_CLASSES)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--copy", action="store_true", help="load the cache into the process")
    parser.add_argument(
        "--no-malloc-tuning", action="store_true", help="glibc's default allocator settings"
    )
    parser.add_argument("--compare", action="store_true", help="memory-mapped and copied")
    parser.add_argument("--cache", type=Path, default=None, help="reuse this cache folder")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    return parser.parse_args(argv)


def run_in_fresh_process(cache_dir: Path, args: argparse.Namespace, copy: bool) -> dict[str, Any]:
    """``measure`` in a new interpreter, so its peak memory is its own."""
    with tempfile.TemporaryDirectory(prefix="bench-memory-run-") as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable, "-m", "subspace_fsl.bench", "memory", "--cache", str(cache_dir),
            "--size", str(args.size), "--episodes", str(args.episodes), "--json", str(out),
            *(["--threads", str(args.threads)] if args.threads else []),
            *(["--copy"] if copy else []),
            *(["--no-malloc-tuning"] if args.no_malloc_tuning else []),
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())[0]


def describe(result: dict[str, Any]) -> str:
    how = "copied into the process" if result["cache_copied"] else "memory-mapped"
    return (
        f"cache of {result['images']} images ({result['cache_mib']:.0f} MiB), {how}, "
        f"{result['episodes']} training episodes: peak RSS {result['peak_rss']:.0f} MiB "
        f"(at the end {result['rss_anon']:.0f} MiB private, {result['rss_file']:.0f} MiB "
        f"file-backed); set-up added {result['set_up_private']:.0f} MiB private; the mapped "
        f"cache file: {result['map_rss']:.0f} MiB resident, {result['map_shared']:.0f} MiB "
        f"shared with other processes, {result['map_private']:.0f} MiB private"
    )
