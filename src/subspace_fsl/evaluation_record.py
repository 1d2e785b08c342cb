"""What an evaluation was made from, and the check that it is current.

``summary.json`` of every evaluation stores :func:`evaluation_record` as ``provenance``: the
sha256 of the checkpoint and of the split file, the split, the episode shape and the
evaluation settings. :func:`check_evaluation` compares it with what the evaluation would be
made from now. The engine writes the record (``engine.evaluate``); the validation choice and
the report check every evaluation they read (``results.load_results``), so a table is never
made from an evaluation of another model, split or episode plan. Torch-free: the report
stages import it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from subspace_fsl import provenance
from subspace_fsl.readers import read_json

#: written last by an evaluation, so an evaluation without it did not finish
SUMMARY_FILE = "summary.json"
REMEDY = "evaluate again (subspace-fsl evaluate, or the workflow)"


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return provenance.file_digest(path)


def file_digest(path: str | os.PathLike[str]) -> str:
    """``provenance.file_digest``, computed once per state of the file (size, mtime, inode):
    a report reads several evaluations of each checkpoint."""
    info = os.stat(path)
    return _digest(str(Path(path).resolve()), info.st_size, info.st_mtime_ns, info.st_ino)


def evaluation_record(
    cfg: Mapping[str, Any],
    checkpoint: str | os.PathLike[str],
    split_name: str,
    split_file: str | os.PathLike[str],
    shot: int | None = None,
) -> dict[str, Any]:
    """What an evaluation's numbers depend on: the checkpoint's and the split file's bytes
    (sha256), the split evaluated, the episode shape (``train.way``, ``train.shot``, the
    evaluation ``shot`` (None = the training shot), ``eval.query``), ``eval.episodes`` and
    ``eval.seed``. Stored as ``provenance`` in ``summary.json``."""
    return provenance.stamp(
        {
            "checkpoint": file_digest(checkpoint),
            "split_file": file_digest(split_file),
            "split": split_name,
            "train": {"way": cfg["train"]["way"], "shot": cfg["train"]["shot"]},
            "eval": {**{k: cfg["eval"][k] for k in ("episodes", "query", "seed")},
                     "shot": cfg["train"]["shot"] if shot is None else shot},
        }
    )


def check_evaluation(
    eval_dir: str | os.PathLike[str],
    cfg: Mapping[str, Any],
    checkpoint: str | os.PathLike[str],
    split_name: str,
    split_file: str | os.PathLike[str],
    shot: int | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` of ``eval_dir`` if it was made from exactly this checkpoint,
    split file and these settings (``shot``: the evaluation shot, None = the training one);
    else ``provenance.ProvenanceError`` naming the file, the first differing input and both
    values (FileNotFoundError when there is no summary: no evaluation, or one that did not
    finish)."""
    path = Path(eval_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"evaluation {path} does not exist")
    summary = read_json(path, REMEDY)
    provenance.check(path, summary.get("provenance"),
                     evaluation_record(cfg, checkpoint, split_name, split_file, shot),
                     remedy=REMEDY)
    return summary
