"""The frozen protocol's settings (``train.backbone: frozen``), torch-free.

What the Snakefile needs at parse time (which protocol, whether mirrored features are stored,
the protocol's own constraints) without importing torch: ``engine.features`` builds and reads
the feature tables and re-exports these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from subspace_fsl.paths import protocol

#: ``train.backbone`` -> whether the backbone is run per episode (and trained)
PROTOCOLS = ("finetune", "frozen")


def is_frozen(cfg: Mapping[str, Any]) -> bool:
    return protocol(cfg) == "frozen"


def check_frozen_settings(cfg: Mapping[str, Any]) -> None:
    """The frozen protocol's own constraints, one line each: it needs the pretrained backbone
    (``train.init: pretrained``) and cannot crop or jitter stored features
    (``train.augment: standard``; ``flip`` picks the stored mirrored row, p = 0.5)."""
    if not is_frozen(cfg):
        return
    train = cfg["train"]
    if train.get("init") != "pretrained":
        raise ValueError(
            f"train.backbone=frozen needs train.init=pretrained (got {train.get('init')!r}): "
            f"a frozen random backbone is not an embedding"
        )
    augments = {train.get("augment", "standard"), *_grid_augments(cfg)}
    if "standard" in augments:
        raise ValueError(
            "train.backbone=frozen cannot use train.augment=standard (random crops and colour "
            "jitter need the images; the stored features have none): use none or flip"
        )


def _grid_augments(cfg: Mapping[str, Any]) -> set[str]:
    grid = cfg.get("grid", {}) or {}
    found = set(grid.get("augment") or [])
    for baseline in (grid.get("baselines") or {}).values():
        found |= set((baseline.get("grid") or {}).get("augment") or [])
    return found


def needs_flipped(cfg: Mapping[str, Any]) -> bool:
    """Whether some run of ``cfg`` (its own settings, its grid and its baselines) reads
    mirrored features: a ``flip`` augmentation policy or a ``model.flip_support`` other than
    ``never``."""
    train, model = cfg["train"], cfg["model"]
    supports = {model.get("flip_support", "never")}
    for baseline in ((cfg.get("grid", {}) or {}).get("baselines") or {}).values():
        supports.add(baseline.get("flip_support") or model.get("flip_support", "never"))
    augments = {train.get("augment", "standard"), *_grid_augments(cfg)}
    return "flip" in augments or supports != {"never"}


def run_flips(cfg: Mapping[str, Any]) -> bool:
    """Whether this one run reads mirrored rows."""
    return cfg["train"].get("augment") == "flip" or cfg["model"].get("flip_support",
                                                                       "never") != "never"
