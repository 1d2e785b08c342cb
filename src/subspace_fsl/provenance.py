"""What a derived artifact was made from, and the one check that refuses a stale one.

Every derived file (the class split, the image cache, an evaluation) stores
``stamp(settings)``: the settings it was made from, flattened to ``{"a.b": value}`` with
JSON values. ``check(path, recorded, current)`` compares that record with the settings the
caller would make the artifact from now and raises :class:`ProvenanceError` naming the file,
the first differing setting and both values. The producer of an artifact rebuilds it instead
(``subspace-fsl split``, ``prepare``); a consumer (``train``, ``evaluate``) refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHUNK = 1 << 23  # 8 MiB: large enough that hashing runs at memory speed


class ProvenanceError(ValueError):
    """A derived file made from other settings than the current ones; names file and key."""

    def __init__(self, path: str | os.PathLike[str], key: str, recorded: Any, current: Any,
                 remedy: str = "") -> None:
        self.path, self.key, self.recorded, self.current = Path(path), key, recorded, current
        message = (
            f"{path} was made with {key}={_show(recorded)} but the current settings give "
            f"{key}={_show(current)}"
        )
        super().__init__(f"{message}; {remedy}" if remedy else message)


def _show(value: Any) -> str:
    return "(not recorded)" if value is _MISSING else json.dumps(value)


_MISSING = object()


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def stamp(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": value}`` for nested ``settings``, values as JSON gives them back (tuples
    become lists, so a record read from disk compares equal to a fresh one)."""
    return json.loads(json.dumps(_flatten(settings), sort_keys=True, default=str))


def check(
    path: str | os.PathLike[str],
    recorded: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    remedy: str = "",
) -> None:
    """Raise :class:`ProvenanceError` unless ``recorded`` (the file's stamp; None when it has
    none) equals ``stamp(current)`` on every key of ``current``.

    Keys only the record holds are ignored (an older consumer may not know them); a key of
    ``current`` the record lacks is a difference: nothing is reused on trust."""
    old, new = stamp(recorded or {}), stamp(current)
    for key in sorted(new):
        if old.get(key, _MISSING) != new[key]:
            raise ProvenanceError(path, key, old.get(key, _MISSING), new[key], remedy)


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every flattened setting whose value differs (either side
    missing included), in key order: what a folder's saved settings say against now."""
    old, new = stamp(recorded), stamp(current)
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in 8 MiB chunks (``"sha256:<hex>"``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def names_digest(names: list[str]) -> str:
    """sha256 of an ordered list of names (e.g. a cache's classes in class_id order)."""
    return "sha256:" + hashlib.sha256("\n".join(names).encode()).hexdigest()
