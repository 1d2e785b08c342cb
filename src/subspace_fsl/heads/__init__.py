"""Few-shot heads: ``head(support [N*K, D], labels [N*K], query [Q, D]) -> HeadOutput``.

Registered names: ``multisubspace`` (the method), ``protonet``, ``dsn``.
``build_head(name, in_dim, **model_section)`` takes the config's whole ``model`` section.
"""

from __future__ import annotations

import inspect
from typing import Any

from subspace_fsl.config import load_schema
from subspace_fsl.heads import dsn, multisubspace, protonet  # noqa: F401  (registers the heads)
from subspace_fsl.heads.base import HEADS, FewShotHead, HeadOutput
from subspace_fsl.heads.dsn import DSNHead
from subspace_fsl.heads.multisubspace import MultiSubspaceHead
from subspace_fsl.heads.protonet import ProtoNetHead

__all__ = [
    "HEADS",
    "DSNHead",
    "FewShotHead",
    "HeadOutput",
    "MultiSubspaceHead",
    "ProtoNetHead",
    "build_head",
]


def model_setting_names() -> set[str]:
    """The ``model`` section's keys, read from the config schema (the one source)."""
    return set(load_schema()["properties"]["model"]["properties"])


def build_head(name: str, in_dim: int, /, **model_settings: Any) -> FewShotHead:
    """Build head ``name`` for D = in_dim features; model-section keys it does not use
    (backbone, head, backbone_weights, or n_subspaces for protonet, ...) are ignored, except
    a ``distance`` other than ``squared`` for a head without that setting (an error)."""
    constructor = HEADS.get(name)
    unknown = sorted(set(model_settings) - model_setting_names())
    if unknown:
        known = sorted(model_setting_names())
        raise ValueError(f"unknown model settings {unknown}; known: {known}")
    accepted = set(inspect.signature(constructor).parameters)
    distance = model_settings.get("distance", "squared")
    if "distance" not in accepted and distance != "squared":
        # ignoring it would train a squared-distance model under a _deuc run name
        raise ValueError(f"head {name!r} has only the squared distance; got distance={distance!r}")
    return constructor(in_dim, **{k: v for k, v in model_settings.items() if k in accepted})
