"""Reading the files the pipeline derived (summaries, tables, records): an unreadable one
(truncated, damaged, not what its name says) is one line naming the file and what to do.

Every reader of a derived JSON or CSV file goes through :func:`read_json` or
:func:`read_table`; :func:`unreadable` is the same test without raising, which the workflow
uses to treat such a file as missing (a changed rerun trigger re-runs the job that makes it).
Torch-free and Snakemake-free: the Snakefile and the report stages import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd


class UnreadableFileError(ValueError):
    """A derived file that exists but cannot be read; the message names it."""


def _problem(path: Path, exc: BaseException, remedy: str) -> UnreadableFileError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UnreadableFileError(
        f"{path} cannot be read (truncated or damaged? {reason}); {remedy}")


def read_json(path: str | os.PathLike[str], remedy: str = "make it again",
              kind: type = dict) -> Any:
    """The JSON value of ``path`` (of type ``kind``); ``UnreadableFileError`` naming it when
    it is not valid UTF-8 JSON of that type (FileNotFoundError when it does not exist)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _problem(path, exc, remedy) from None
    if not isinstance(value, kind):
        raise _problem(path, TypeError(f"it holds a JSON {type(value).__name__}, not a "
                                       f"{kind.__name__}"), remedy)
    return value


def read_table(path: str | os.PathLike[str], remedy: str = "make it again",
               columns: Iterable[str] = (), **options: Any) -> pd.DataFrame:
    """The CSV table of ``path`` (``pandas.read_csv(**options)``) holding ``columns``;
    ``UnreadableFileError`` naming it when it cannot be parsed or lacks a column."""
    path = Path(path)
    try:
        table = pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as exc:
        raise _problem(path, exc, remedy) from None
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise _problem(path, ValueError(f"no column {', '.join(missing)}"), remedy)
    return table


def unreadable(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Those of ``paths`` that exist but cannot be read (``.json``: :func:`read_json`,
    ``.csv``: :func:`read_table`); an absent file is not listed."""
    bad = []
    for path in map(Path, paths):
        if not path.is_file():
            continue
        try:
            (read_json if path.suffix == ".json" else read_table)(path)
        except (UnreadableFileError, OSError):
            bad.append(str(path))
    return bad


def discard_unreadable(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Delete those of ``paths`` that exist but cannot be read, and say so (one line each on
    stderr): the workflow calls it on the files its jobs make, so Snakemake sees such a file
    as missing and re-runs its job instead of reporting "Nothing to be done". A derived file
    that cannot be read holds nothing to keep. Returns the deleted paths."""
    import sys

    bad = unreadable(paths)
    for path in bad:
        Path(path).unlink(missing_ok=True)
        print(f"subspace-fsl: {path} cannot be read (truncated or damaged): removed, so the "
              f"job that makes it runs again", file=sys.stderr)
    return bad
