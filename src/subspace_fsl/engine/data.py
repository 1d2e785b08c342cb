"""The engine's view of the data: the image cache, the class split, and shape checks.

Built on ``subspace_fsl.data`` (cache, splits, episodes); this module only joins them and
turns a bad episode shape into an error that names the setting, before any training starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class EngineData:
    """An opened image cache plus the class split (names) mapped onto the cache's class ids."""

    cache: Any  # subspace_fsl.data.cache.ImageCache
    split: dict[str, Any]
    split_file: Path | None = None
    device_images: torch.Tensor | None = None  # set by place_cache
    _class_ids: dict[str, int] = field(default_factory=dict)
    _loaders: dict[torch.device, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._class_ids = {str(name): i for i, name in enumerate(self.cache.class_names)}

    @property
    def images(self) -> Any:
        """What episode loaders read: the uint8 copy on the device when placed, else the
        memory-mapped cache (an ``EngineData`` can be passed wherever a cache is expected)."""
        return self.device_images if self.device_images is not None else self.cache.images

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.cache.labels)

    @property
    def stamp(self) -> str:
        return str(self.cache.stamp)

    def split_classes(self, split_name: str) -> list[int]:
        """Class ids of a split (``base``, ``val``, ``novel``) in the split file's order."""
        names = self.split[split_name]
        missing = [n for n in names if n not in self._class_ids]
        if missing:
            raise ValueError(
                f"split file {self.split_file} names classes the image cache does not hold "
                f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); "
                f"was it made for another data set?"
            )
        return [self._class_ids[n] for n in names]

    def images_to_tensor(self, indices: np.ndarray, device: torch.device) -> torch.Tensor:
        """Normalised float images ``[n, 3, H, W]`` of cache rows (no augmentation)."""
        from subspace_fsl.data.episodes import EpisodeLoader

        if device not in self._loaders:
            self._loaders[device] = EpisodeLoader(self, device, augment="none")
        return self._loaders[device].load(np.asarray(indices, dtype=np.int64))


def place_cache(data: EngineData, runtime: Any) -> bool:
    """Copy the uint8 image cache to the device once, per ``runtime.cache_on_device``.

    ``auto`` does so on CUDA when the cache takes under half of the free device memory (a
    CUB cache at 84 px is 250 MB); ``true`` insists (on a CPU it copies the memory-mapped
    cache into this process, which only tests need); ``false`` never. Episodes are then
    gathered on the device with no host-to-device copy. Returns whether it was placed."""
    setting = runtime.cache_on_device
    if setting is False or (setting == "auto" and runtime.device.type != "cuda"):
        return False
    if data.device_images is not None and data.device_images.device == runtime.device:
        return True
    nbytes = int(np.prod(data.cache.images.shape))
    if runtime.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(runtime.device)
        if nbytes > free // 2:
            message = (
                f"runtime.cache_on_device={setting!r}: the image cache {data.cache.directory} "
                f"takes {nbytes / 2**20:.0f} MiB, more than half of the {free / 2**20:.0f} MiB "
                f"free on {runtime.device}"
            )
            if setting == "auto":
                log.info("%s; reading it from host memory instead", message)
                return False
            raise ValueError(f"{message}; set runtime.cache_on_device=auto or false")
    host = torch.from_numpy(np.array(data.cache.images))  # read the memory map once
    data.device_images = host.to(runtime.device) if runtime.device.type == "cuda" else host
    data._loaders.clear()
    log.info("image cache (%.0f MiB) placed on %s", nbytes / 2**20, runtime.device)
    return True


def resolve_split(
    cfg: Mapping[str, Any], split_file: str | os.PathLike[str] | None, class_names: list[str]
) -> tuple[dict[str, Any], Path]:
    """Load the split file; create it from ``cfg['split']`` when it does not exist yet.

    An existing file made from other ``split.*`` settings or another class list is refused
    (``provenance.ProvenanceError`` names the file, the setting and both values): only
    ``subspace-fsl split``, the file's producer, replaces one."""
    from subspace_fsl.data.splits import check_split_settings, load_split, make_split, save_split

    if split_file is None:
        from subspace_fsl.paths import split_path

        split_file = split_path(cfg)
    path = Path(split_file)
    settings = cfg["split"]
    if not path.is_file():
        split = make_split(class_names, settings["rule"], settings["counts"], settings["seed"],
                           settings.get("lists"))
        save_split(split, path)
        log.info("made class split %s (rule %s)", path, settings["rule"])
    split = load_split(path, class_names)
    check_split_settings(split, path, class_names, settings)
    return split, path


def open_data(
    cfg: Mapping[str, Any],
    *,
    split_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> EngineData:
    """Open (building if needed) the configuration's image cache and its class split.

    The cache's bytes are verified against the checksum in its ``meta.json`` and its
    preprocessing settings against ``cfg['dataset']`` (a cache given with ``cache_dir`` made
    at another ``dataset.image_size`` is refused, never used). ``progress`` shows bars while
    raw data or the cache are being built."""
    from subspace_fsl.data.cache import ImageCache, check_cache_settings, prepare

    directory = Path(cache_dir) if cache_dir is not None else prepare(cfg, progress=progress)
    cache = ImageCache.open(directory, verify=True)
    check_cache_settings(cache, cfg)
    split, path = resolve_split(cfg, split_file, [str(n) for n in cache.class_names])
    return EngineData(cache=cache, split=split, split_file=path)


def check_episode_fits(
    data: EngineData, split_name: str, way: int, shot: int, query: int, query_key: str
) -> None:
    """Way within the split's classes, shot + query within its smallest class; else name the
    keys (way and shot are always the ``train`` ones; ``query_key`` says whose query it is)."""
    classes = data.split_classes(split_name)
    if way > len(classes):
        raise ValueError(f"train.way={way} but the {split_name} split has {len(classes)} classes")
    counts = np.bincount(data.labels, minlength=max(classes) + 1)[classes]
    smallest = int(counts.min())
    if shot + query > smallest:
        raise ValueError(
            f"train.shot={shot} + {query_key}={query} = {shot + query} but the smallest "
            f"{split_name} class has {smallest} images"
        )
