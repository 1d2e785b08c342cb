"""Pieces every benchmark shares: the compared configurations' settings, device syncs."""

from __future__ import annotations

from typing import Any

import torch

# the method as benchmarked everywhere: S = 4 feature subspaces of dimension d = 64
METHOD_SETTINGS = ("model.n_subspaces=4", "model.subspace_dim=64")


def episode_settings(
    head: str, way: int, shot: int, query: int, device: str, threads: int | None
) -> list[str]:
    """``--set`` overrides of one benchmarked configuration: head, episode shape, runtime."""
    return [
        f"model.head={head}",
        *METHOD_SETTINGS,
        f"train.way={way}",
        f"train.shot={shot}",
        f"train.query={query}",
        f"runtime.device={device}",
        "runtime.progress=none",
        *([f"runtime.threads={threads}"] if threads else []),
    ]


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def every_class_data(cache: Any) -> Any:
    """``EngineData`` over an opened image cache whose base and novel splits both hold every
    class (benchmarks measure speed, not generalisation; there is no validation split)."""
    from subspace_fsl.engine.data import EngineData

    names = [str(n) for n in cache.class_names]
    return EngineData(cache=cache, split={"rule": "all", "base": names, "val": [], "novel": names})
