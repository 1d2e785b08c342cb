"""Checkpoints that hold only tensors and plain containers, written atomically.

A checkpoint is loaded with ``torch.load(..., weights_only=True)``: a file from a stranger
can hold data but cannot run code. Everything stored (RNG states included) is therefore
converted to tensors, numbers, strings, lists, tuples and dicts first.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subspace_fsl.config import atomic_open

FORMAT = "subspace-fsl/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely, or is not one of ours."""


class _RecordingWriter:
    """A binary file's ``write`` that remembers the ``OSError`` it raised: ``torch.save``
    turns a failed write into a RuntimeError ("unexpected pos ...") without the cause."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A failed write (a full disk) raises the ``OSError`` naming ``path``; the previous file
    at ``path`` is untouched and the temporary file is removed."""
    with atomic_open(path, "wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save({"format": FORMAT, **state}, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def torch_load_plain(
    path: str | os.PathLike[str], what: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that name ``what`` and the
    file: missing, a folder, refused (it wants to build objects: a pickle with code) or not a
    torch file at all (random bytes, text, truncated). Never suggests ``weights_only=False``."""
    source = Path(path)
    if source.is_dir():
        raise CheckpointError(f"{what} {source} is a folder, not a file")
    if not source.is_file():
        raise FileNotFoundError(errno.ENOENT, f"{what} does not exist", str(source))
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, None):  # EINVAL: torch's reader on a cut-off file
            raise
        reason: str = "it cannot be read (damaged or truncated)"
    except Exception as exc:  # torch.load raises KeyError, IndexError, ... on foreign bytes
        refused = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if isinstance(exc, pickle.UnpicklingError) and refused:
            # weights_only refuses globals it does not know: the file wants to build or run
            # objects, which a checkpoint of ours never does
            raise CheckpointError(
                f"{what} {source} was refused: it holds more than tensors and plain containers "
                f"(loaded with weights_only=True): {refused}"
            ) from None
        reason = "it cannot be read (damaged, truncated or not a torch file)"
    raise CheckpointError(f"{what} {source} is not a checkpoint: {reason}") from None


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything that is not plain data."""
    source = Path(path)
    state = torch_load_plain(source, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {source} is not a {FORMAT} checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain containers."""
    # the legacy global RNG is what third-party code draws from; capture it as-is
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(np_state[0]),
            "keys": [int(k) for k in np_state[1]],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy_state["bit_generator"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's global RNG and python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
