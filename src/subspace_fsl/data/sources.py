"""The real data sources, keyed by ``dataset.source``: reader, layout test, published files.

Each :class:`Source` says how to recognise its extracted layout (``is_root``), how to read it
into the reader table (``records.COLUMNS``; cache building is the same for all), which
annotation files its cache stamp hashes, whether it has bounding boxes, and its published
files (name, URL, MD5, size). ``remote_files`` resolves ``dataset.url`` / ``md5`` /
``size_bytes`` against them:

- ``url: official``: the published files (Stanford Cars has none any more: an error);
- ``url: <...>/`` (ends in ``/``): a folder (mirror, or ``file://`` folder of pre-downloaded
  files) holding the published files under their published names;
- any other URL: one archive that holds the whole layout.

``md5`` / ``size_bytes``: ``official`` = the published value of each file, looked up by its
name (none published: downloaded unverified, and logged so); null = not checked; a value =
that of the single archive (an error when the source has several files).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from subspace_fsl.data import aircraft, cars, cub, dogs, flowers, folder
from subspace_fsl.data.download import archive_name
from subspace_fsl.data.records import DatasetError

OFFICIAL = "official"


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its local name, URL and expected MD5 / size (None: not checked)."""

    name: str
    url: str
    md5: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class Source:
    read: Callable[[Path, bool], pd.DataFrame]
    is_root: Callable[[Path], bool]
    layout: str  # what is_root looks for, in words (for errors)
    files: tuple[Remote, ...] = ()  # the published files; () = no official download
    annotations: tuple[str, ...] = ()  # list files (relative) hashed into the cache stamp
    boxes: bool = False  # has bounding boxes for dataset.crop_to_bbox
    downloads: bool = True  # False: a local folder only (source folder)
    #: the published names a ``.../`` folder URL serves (default: ``files``), e.g. Cars' old
    #: archives, which are no longer downloadable but are still checked by their MD5
    copies: tuple[Remote, ...] = ()


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_DOGS = "http://vision.stanford.edu/aditya86/ImageNetDogs"

SOURCES: dict[str, Source] = {
    "cub": Source(
        cub.read_cub, cub.is_dataset_root, "images.txt",
        (Remote("CUB_200_2011.tgz",
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78", 1150585339),),
        boxes=True,
    ),
    "aircraft": Source(
        aircraft.read_aircraft, aircraft.is_dataset_root, "data/variants.txt",
        # the project page publishes an MD5 sum page but no value we could check offline
        (Remote("fgvc-aircraft-2013b.tar.gz",
                f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"),),
        aircraft.ANNOTATIONS, boxes=True,
    ),
    "dogs": Source(
        dogs.read_dogs, dogs.is_dataset_root, "Images/ and file_list.mat",
        (Remote("images.tar", f"{_DOGS}/images.tar"), Remote("lists.tar", f"{_DOGS}/lists.tar")),
        dogs.ANNOTATIONS,
    ),
    "flowers": Source(
        flowers.read_flowers, flowers.is_dataset_root, "jpg/ and imagelabels.mat",
        # MD5s as torchvision.datasets.Flowers102 checks them
        (Remote("102flowers.tgz", f"{_VGG}/flowers/102/102flowers.tgz",
                "52808999861908f626f3c1f4e79d11fa"),
         Remote("imagelabels.mat", f"{_VGG}/flowers/102/imagelabels.mat",
                "e0620be6f572b9609742df49c70aed4d")),
        flowers.ANNOTATIONS,
    ),
    "cars": Source(
        cars.read_cars, cars.is_dataset_root,
        "cars_train/ + devkit/cars_meta.mat, or NNN.<name> class folders",
        (),  # ai.stanford.edu no longer serves cars_train.tgz / car_devkit.tgz
        cars.ANNOTATIONS, boxes=True,
        # MD5s as torchvision.datasets.StanfordCars checked them
        copies=(Remote("cars_train.tgz", "", "065e5b463ae28d29e77c1b4b166cfe61"),
                Remote("car_devkit.tgz", "", "c3b158d763b6e2245038c8ad08e45376")),
    ),
    "folder": Source(
        lambda root, crop: folder.read_folder(root), lambda p: Path(p).is_dir(),
        "one sub-folder per class", downloads=False,
    ),
}

def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        choices = ", ".join(sorted([*SOURCES, "synthetic"]))
        raise DatasetError(f"dataset.source {name!r}: choose one of {choices}") from None


def _copies(source: Source) -> tuple[Remote, ...]:
    return source.copies or source.files


def _published(source: Source, name: str) -> Remote:
    """The published file called ``name`` (its MD5 and size), or one with no values."""
    return next((r for r in _copies(source) if r.name == name), Remote(name, ""))


def remote_files(name: str, dataset: Mapping[str, Any]) -> list[Remote]:
    """The files to fetch for ``dataset.source`` = ``name`` (see the module docstring)."""
    source = get_source(name)
    url, md5, size = dataset["url"], dataset["md5"], dataset["size_bytes"]
    if url == OFFICIAL:
        if not source.files:
            raise DatasetError(
                f"dataset.source {name}: there is no official download any more; set "
                "dataset.root to an extracted copy or dataset.url to an archive (docs/data.md)"
            )
        wanted = list(source.files)
    elif url.endswith("/"):
        wanted = [Remote(r.name, url + r.name, r.md5, r.size_bytes) for r in _copies(source)]
        if not wanted:
            raise DatasetError(f"dataset.url {url}: source {name} has no published files")
    else:
        single = archive_name(url)
        wanted = [Remote(single, url, *_values(_published(source, single)))]
    if len(wanted) > 1 and (md5 not in (OFFICIAL, None) or size not in (OFFICIAL, None)):
        raise DatasetError(
            f"dataset.md5 / dataset.size_bytes: one value, but source {name} fetches "
            f"{len(wanted)} files ({', '.join(r.name for r in wanted)}); use official or null"
        )
    return [
        Remote(
            r.name,
            r.url,
            r.md5 if md5 == OFFICIAL else md5,
            r.size_bytes if size == OFFICIAL else size,
        )
        for r in wanted
    ]


def _values(remote: Remote) -> tuple[str | None, int | None]:
    return remote.md5, remote.size_bytes


def annotations_digest(source: Source, root: str | os.PathLike[str]) -> dict[str, str] | None:
    """sha256 of each annotation file the layout holds (for the cache stamp), or None."""
    digests = {
        name: hashlib.sha256((Path(root) / name).read_bytes()).hexdigest()
        for name in source.annotations
        if (Path(root) / name).is_file()
    }
    return digests or None
