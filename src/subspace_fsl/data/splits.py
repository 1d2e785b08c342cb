"""Base / validation / novel class splits: a seeded random rule, fixed published rules and
explicit class lists (``RULES``: rule name -> function of the class names and settings).

- ``random``: a seeded permutation cut into ``counts`` (integers summing to the number of
  classes, or fractions summing to 1); 100 / 50 / 50 for CUB as in the patent.
- ``closer-look`` (Chen et al. 2019): class names sorted, indexed from 0; base i % 2 == 0,
  val i % 4 == 1, novel i % 4 == 3.
- ``frn`` (Wertheimer et al. 2021): CUB's 1-based class ids (the order of ``classes.txt``);
  base id % 2 == 0, val id % 4 == 1, novel id % 4 == 3.
- ``frn-aircraft`` (FRN's ``init_Aircraft_fewshot.py``): FGVC-Aircraft's 100 variants indexed
  from 0 in ``variants.txt`` order (the class order); base i % 2 == 0, val i % 4 == 1, novel
  i % 4 == 3 (50 / 25 / 25).
- ``lists``: ``split.lists.{base,val,novel}``, text files of class names (one a line, blank
  lines and ``#`` comments ignored); each set keeps the data set's class order.
The fixed rules exist only for their data set's class count; anything else is an error.

A split file records what it was made from (``provenance``: ``split.rule``, ``split.seed`` and
``split.counts`` as they act, the digest of each class list's content for ``lists``, plus the
digest of the class list in class_id order);
``check_split_settings`` refuses a file whose record differs from the current settings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from subspace_fsl import provenance
from subspace_fsl.config import atomic_write_text

log = logging.getLogger(__name__)

SETS = ("base", "val", "novel")
CUB_CLASSES = 200
AIRCRAFT_CLASSES = 100


class SplitError(ValueError):
    """A split that overlaps, misses classes or does not fit the data set; names the classes."""


def split_counts(n_classes: int, counts: Sequence[float]) -> list[int]:
    """Integers summing to ``n_classes`` (kept) or fractions summing to 1 (rounded)."""
    if len(counts) != 3 or any(c <= 0 for c in counts):
        raise SplitError(f"split.counts {list(counts)} must be three positive numbers")
    if all(float(c).is_integer() for c in counts) and sum(counts) == n_classes:
        return [int(c) for c in counts]
    if all(c < 1 for c in counts) and math.isclose(sum(counts), 1.0, abs_tol=1e-6):
        base, val = round(counts[0] * n_classes), round(counts[1] * n_classes)
        result = [base, val, n_classes - base - val]
        if min(result) < 1:
            raise SplitError(
                f"split.counts {list(counts)} leaves a set empty with {n_classes} classes"
            )
        return result
    raise SplitError(
        f"split.counts {list(counts)} must be integers summing to the data set's "
        f"{n_classes} classes or fractions summing to 1 (e.g. [0.5, 0.25, 0.25])"
    )


def make_split(
    class_names: Sequence[str],
    rule: str = "random",
    counts: Sequence[float] = (100, 50, 50),
    seed: int = 0,
    lists: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"rule", "seed", "counts", "base", "val", "novel", "provenance"}`` (class names;
    ``provenance`` is ``split_provenance`` of the arguments).

    ``class_names`` must be in class_id order (CUB's ``classes.txt`` order); each set keeps
    that order. ``seed`` is recorded as null for the rules that do not use it. ``lists``
    (``split.lists``) names the three class-list files of rule ``lists``."""
    names = [str(n) for n in class_names]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SplitError(f"class names appear more than once: {duplicated[:5]}")
    if rule not in RULES:
        raise SplitError(f"unknown split rule {rule!r}; choose one of: {', '.join(RULES)}")
    sets = RULES[rule](names, counts=counts, seed=seed, lists=lists)
    position = {n: i for i, n in enumerate(names)}
    sets = {s: sorted(sets[s], key=position.__getitem__) for s in SETS}
    made_from = split_provenance(names, rule, counts, seed, lists)
    return _split(rule, seed if rule == "random" else None, sets, made_from)


def _random(names: list[str], counts: Sequence[float], seed: int, **_: Any) -> dict[str, list]:
    sizes = split_counts(len(names), counts)
    permutation = np.random.default_rng(seed).permutation(len(names))
    groups = np.split(permutation, np.cumsum(sizes)[:-1])
    return {s: [names[i] for i in g] for s, g in zip(SETS, groups, strict=True)}


def _residues(keyed: list[tuple[int, str]]) -> dict[str, list[str]]:
    """base k % 2 == 0, val k % 4 == 1, novel k % 4 == 3 (every fixed rule's residues)."""
    return {
        "base": [n for k, n in keyed if k % 2 == 0],
        "val": [n for k, n in keyed if k % 4 == 1],
        "novel": [n for k, n in keyed if k % 4 == 3],
    }


def _needs(names: list[str], rule: str, expected: int, data_set: str) -> None:
    if len(names) != expected:
        raise SplitError(
            f"split rule {rule!r} is defined for {data_set}'s {expected} classes, "
            f"this data set has {len(names)}; use rule random or lists"
        )


def _closer_look(names: list[str], **_: Any) -> dict[str, list[str]]:
    _needs(names, "closer-look", CUB_CLASSES, "CUB")
    return _residues(list(enumerate(sorted(names))))  # 0-based index of the sorted names


def _frn(names: list[str], **_: Any) -> dict[str, list[str]]:
    _needs(names, "frn", CUB_CLASSES, "CUB")
    return _residues([(_cub_id(n, i), n) for i, n in enumerate(names)])


def _frn_aircraft(names: list[str], **_: Any) -> dict[str, list[str]]:
    _needs(names, "frn-aircraft", AIRCRAFT_CLASSES, "FGVC-Aircraft")
    return _residues(list(enumerate(names)))  # 0-based index in variants.txt order


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """The class names of a list file: one a line, surrounding blanks stripped, blank lines
    and lines starting with ``#`` ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SplitError(f"class list {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitError(f"class list {path} cannot be read: {exc}") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _list_paths(lists: Mapping[str, Any] | None) -> dict[str, str]:
    paths = {s: (lists or {}).get(s) for s in SETS}
    unset = [s for s in SETS if not paths[s]]
    if unset:
        raise SplitError(f"split.rule lists needs split.lists.{unset[0]} (a class-list file)")
    return {s: str(paths[s]) for s in SETS}


def _lists(names: list[str], lists: Mapping[str, Any] | None, **_: Any) -> dict[str, list[str]]:
    """The classes of ``split.lists``: errors name the file and the class."""
    paths = _list_paths(lists)
    known, owner = set(names), {}
    sets: dict[str, list[str]] = {}
    for s in SETS:
        members = read_class_list(paths[s])
        if not members:
            raise SplitError(f"class list {paths[s]} (split.lists.{s}) lists no classes")
        for name in members:
            if name not in known:
                raise SplitError(
                    f"class list {paths[s]}: class {name!r} is not in the data set "
                    f"({len(names)} classes, e.g. {names[0]!r})"
                )
            if name in owner:
                where = "twice" if owner[name] == paths[s] else f"and in {owner[name]}"
                raise SplitError(f"class list {paths[s]}: class {name!r} is listed {where}")
            owner[name] = paths[s]
        sets[s] = members
    unlisted = [n for n in names if n not in owner]
    if unlisted:
        raise SplitError(
            f"class lists {', '.join(paths.values())}: data set class {unlisted[0]!r} is in "
            f"none of them ({len(unlisted)} classes unlisted)"
        )
    return sets


RULES: dict[str, Callable[..., dict[str, list[str]]]] = {
    "random": _random,
    "closer-look": _closer_look,
    "frn": _frn,
    "frn-aircraft": _frn_aircraft,
    "lists": _lists,
}


def _cub_id(name: str, position: int) -> int:
    """1-based CUB class id: ``position + 1``, checked against a ``NNN.`` name prefix."""
    match = re.match(r"^(\d+)\.", name)
    if match and int(match.group(1)) != position + 1:
        raise SplitError(
            f"class {name!r} is number {position + 1} in the class list but its "
            f"name says {int(match.group(1))}; frn needs classes in CUB id order"
        )
    return position + 1


def _split(
    rule: str, seed: int | None, sets: dict[str, list[str]], made_from: dict[str, Any]
) -> dict[str, Any]:
    counts = [len(sets[s]) for s in SETS]
    return {"rule": rule, "seed": seed, "counts": counts, **sets, "provenance": made_from}


def split_provenance(
    class_names: Sequence[str],
    rule: str,
    counts: Sequence[float],
    seed: int,
    lists: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a split made now from these settings depends on: the rule; for ``random`` the
    seed and the counts resolved to integers (``[0.5, 0.25, 0.25]`` and ``[100, 50, 50]``
    make the same CUB split; the fixed rules use neither); for ``lists`` the digest of each
    list's set of classes (editing a list remakes the split; reordering or moving it does not); the ordered
    class list."""
    random = rule == "random"
    made_from: dict[str, Any] = {
        "split.rule": rule,
        "split.seed": seed if random else None,
        "split.counts": split_counts(len(class_names), counts) if random else None,
        "classes": provenance.names_digest([str(n) for n in class_names]),
    }
    if rule == "lists":
        paths = _list_paths(lists)
        for s in SETS:
            made_from[f"split.lists.{s}"] = provenance.names_digest(sorted(read_class_list(paths[s])))
    return provenance.stamp(made_from)


def check_split_settings(
    split: dict[str, Any],
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    settings: dict[str, Any],
) -> None:
    """Raise ``provenance.ProvenanceError`` (naming the file, the setting and both values)
    when the split file was made from other ``split.*`` settings or another class list than
    ``settings`` and ``class_names`` give now.

    A file without a ``provenance`` record (written by hand, or by an older version) is
    judged by its own ``rule`` / ``seed`` / ``counts`` fields."""
    current = split_provenance(
        class_names, settings["rule"], settings["counts"], settings["seed"], settings.get("lists")
    )
    recorded = split.get("provenance")
    if recorded is None:
        random = split["rule"] == "random"
        recorded = {
            "split.rule": split["rule"],
            "split.seed": split["seed"] if random else None,
            "split.counts": split["counts"] if random else None,
        }
        current.pop("classes")  # a hand-made file names its classes; load_split checked them
    provenance.check(
        path,
        recorded,
        current,
        remedy="run `subspace-fsl split` with the current settings to remake it (or delete it)",
    )


def check_split(
    split: dict[str, Any], class_names: Sequence[str] | None = None, source: str = "split"
) -> dict[str, Any]:
    """Raise ``SplitError`` for missing keys, overlapping sets, duplicates, counts that do not
    match, or (given ``class_names``) classes unknown to or missing from the data set."""
    missing_keys = [k for k in ("rule", "seed", "counts", *SETS) if k not in split]
    if missing_keys:
        raise SplitError(f"{source}: missing keys {missing_keys}")
    if split["rule"] not in RULES:
        raise SplitError(f"{source}: unknown rule {split['rule']!r}")
    for s in SETS:
        members = split[s]
        if (
            not isinstance(members, list)
            or not all(isinstance(n, str) for n in members)
            or not members
        ):
            raise SplitError(f"{source}: {s!r} must be a non-empty list of class names")
        repeated = sorted({n for n in members if members.count(n) > 1})
        if repeated:
            raise SplitError(f"{source}: classes listed twice in {s!r}: {repeated[:5]}")
    for i, a in enumerate(SETS):
        for b in SETS[i + 1 :]:
            shared = sorted(set(split[a]) & set(split[b]))
            if shared:
                raise SplitError(
                    f"{source}: classes in both {a!r} and {b!r}: {shared[:5]}"
                    f"{' ...' if len(shared) > 5 else ''} ({len(shared)} in all)"
                )
    if list(split["counts"]) != [len(split[s]) for s in SETS]:
        raise SplitError(
            f"{source}: counts {split['counts']} do not match the lists' lengths "
            f"{[len(split[s]) for s in SETS]}"
        )
    if class_names is not None:
        known = set(class_names)
        listed = set().union(*(split[s] for s in SETS))
        unknown = sorted(listed - known)
        if unknown:
            raise SplitError(
                f"{source}: classes not in the data set: {unknown[:5]} ({len(unknown)} in all)"
            )
        missing = sorted(known - listed)
        if missing:
            raise SplitError(
                f"{source}: data set classes in no set: {missing[:5]} ({len(missing)} in all)"
            )
    return split


def save_split(split: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write the split as JSON (atomically)."""
    check_split(split, source=str(path))
    atomic_write_text(path, json.dumps(split, indent=1) + "\n")
    return Path(path)


def load_split(
    path: str | os.PathLike[str], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Read and validate a split file (against the data set's classes when given)."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise SplitError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SplitError(f"split file {path} is not valid JSON: {exc}") from exc
    if not isinstance(split, dict):
        raise SplitError(f"split file {path} must hold a JSON object")
    return check_split(split, class_names, source=str(path))


def write_split(
    cfg: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """The ``split`` settings of ``cfg`` applied to the image cache's classes (in class_id
    order), saved to ``out`` (default ``paths.split_path(cfg)``); returns the file."""
    from subspace_fsl import paths, provenance
    from subspace_fsl.data.cache import ImageCache

    # the split file's producer: an existing file is replaced (atomically) whatever it was
    # made from, and the log says which setting changed; consumers only ever refuse one
    cache = ImageCache.open(cache_dir or paths.cache_dir(cfg), verify=False)
    names = [str(n) for n in cache.class_names]
    settings = cfg["split"]
    target = Path(out or paths.split_path(cfg))
    if target.is_file():
        try:
            check_split_settings(load_split(target), target, names, settings)
        except (provenance.ProvenanceError, ValueError) as exc:
            log.info("replacing %s: %s", target, exc)
    split = make_split(
        names, settings["rule"], settings["counts"], settings["seed"], settings.get("lists")
    )
    path = save_split(split, target)
    log.info("%s: rule %s, %d base / %d validation / %d novel classes", path, split["rule"],
             len(split["base"]), len(split["val"]), len(split["novel"]))
    return path


def list_files(settings: Mapping[str, Any]) -> list[str]:
    """The class-list files ``split`` settings read (rule ``lists``; none for other rules):
    the split stage's inputs besides the cache, so that editing a list re-runs it."""
    if settings.get("rule") != "lists":
        return []
    lists = settings.get("lists") or {}
    return [str(lists[s]) for s in SETS if lists.get(s)]  # an unset one: the job says so
