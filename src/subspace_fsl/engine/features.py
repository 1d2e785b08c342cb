"""The frozen-embedding protocol (``train.backbone: frozen``): every cached image embedded once.

The pretrain stage's backbone ``f`` (eval mode, no gradient, batches of ``eval.batch_size``,
float32) maps every image ``x_i`` of the image cache to ``features[i] = f(x_i)`` and, when a
run of the configuration flips (``train.augment: flip`` or ``model.flip_support``), its
mirror image to ``flipped[i] = f(hflip(x_i))``. The table is ONE file per data set and
backbone (``paths.features_path``), written atomically, with its provenance
(:func:`feature_settings`): the backbone checkpoint's sha256, the cache stamp and image
checksum, the preprocessing settings and whether mirrors are stored. ``embed`` (the
producer) rebuilds it when any of those changed; a reader (:func:`open_features`: train,
evaluate) refuses a stale one with one line naming the setting.

Head-only episodes then read rows of the table: :meth:`FeatureTable.episode` is the one place
the single-run trainer, validation, evaluation and a batched-cells trainer get an episode's
support and query features from its cache indices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subspace_fsl.frozen_protocol import needs_flipped, run_flips

log = logging.getLogger(__name__)

#: the stored layout; a file of another version is rebuilt by ``embed``, refused by readers
FORMAT_VERSION = 1


class FeatureError(ValueError):
    """A feature file that cannot be used: missing, of another format, stale or too small."""


def feature_settings(
    cfg: Mapping[str, Any], backbone_file: str | os.PathLike[str], cache_meta: Mapping[str, Any],
    flipped: bool | None = None,
) -> dict[str, Any]:
    """The provenance of a feature table: what its numbers depend on."""
    from subspace_fsl.data.episodes import IMAGENET_MEAN, IMAGENET_STD
    from subspace_fsl.provenance import file_digest

    return {
        "format_version": FORMAT_VERSION,
        "model.backbone": str(cfg["model"]["backbone"]),
        "backbone.sha256": file_digest(backbone_file),
        "cache.stamp": str(cache_meta["stamp"]),
        "cache.images_sha256": str(cache_meta.get("images_sha256")),
        "dataset.name": str(cfg["dataset"]["name"]),
        "dataset.image_size": int(cache_meta["image_size"]),
        "dataset.resize": int(cache_meta["resize"] or cache_meta["image_size"]),
        "dataset.crop_to_bbox": bool(cache_meta["crop_to_bbox"]),
        "normalise.mean": list(IMAGENET_MEAN),
        "normalise.std": list(IMAGENET_STD),
        "flipped": needs_flipped(cfg) if flipped is None else bool(flipped),
    }


def settings_digest(settings: Mapping[str, Any]) -> str:
    """sha256 of a provenance record (the table's ``stamp``)."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class FeatureTable:
    """``features[i]`` = the frozen backbone's feature of cache image ``i`` ([n, D] float32);
    ``flipped[i]`` = that of its horizontal mirror (None when not stored); ``stamp`` = the
    digest of ``provenance`` (:func:`feature_settings`). ``labels`` / ``class_names`` are the
    cache's, so a head-only run needs no image."""

    features: torch.Tensor
    flipped: torch.Tensor | None
    stamp: str
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    class_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def to(self, device: str | torch.device) -> FeatureTable:
        """The same table with its tensors on ``device``."""
        return FeatureTable(
            self.features.to(device),
            None if self.flipped is None else self.flipped.to(device),
            self.stamp, self.labels, self.class_names, self.provenance, self.path,
        )

    def rows(self, indices: Any, flip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features of cache rows ``indices`` (any shape ``[...]`` -> ``[..., D]``); where
        ``flip_mask`` (bool, same shape) is true, the mirrored image's feature instead."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.features.device)
        out = self.features[index]
        if flip_mask is not None:
            mirrored = self._flipped()[index]
            mask = flip_mask.to(out.device, torch.bool).unsqueeze(-1)
            out = torch.where(mask, mirrored, out)
        return out

    def episode(
        self,
        support_idx: Any,
        query_idx: Any,
        flip_mask: torch.Tensor | None = None,
        mirror_support: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(support ``[..., n_s(, x2), D]``, query ``[..., n_q, D]``) of one episode (or a
        stack of episodes: leading dimensions pass through, e.g. cells).

        ``flip_mask`` ``[..., n_s + n_q]`` (support first) picks the mirrored row per image:
        ``train.augment: flip`` on stored features. ``mirror_support`` appends each support
        image's other orientation (``model.flip_support``): ``[s_1..s_n, hflip(s_1)..]``, the
        caller repeats the support labels (``model.with_mirrored_support``'s order)."""
        support_idx, query_idx = np.asarray(support_idx), np.asarray(query_idx)
        n_support = support_idx.shape[-1]
        support_mask = query_mask = None
        if flip_mask is not None:
            support_mask, query_mask = flip_mask[..., :n_support], flip_mask[..., n_support:]
        support = self.rows(support_idx, support_mask)
        query = self.rows(query_idx, query_mask)
        if mirror_support:
            other = (
                torch.ones(support_idx.shape, dtype=torch.bool)
                if support_mask is None
                else ~support_mask.to(torch.bool)
            )
            support = torch.cat([support, self.rows(support_idx, other)], dim=-2)
        return support, query

    def _flipped(self) -> torch.Tensor:
        if self.flipped is None:
            where = f" {self.path}" if self.path is not None else ""
            raise FeatureError(
                f"feature file{where} holds no mirrored features (flipped=false) but this run "
                f"flips (train.augment=flip or model.flip_support); run `subspace-fsl embed` "
                f"with this configuration"
            )
        return self.flipped

    def as_cache(self) -> Any:
        """What ``engine.data.EngineData`` needs of a cache (labels, class names, the cache
        stamp), without images."""
        return _CacheIndex(self)


@dataclass
class _CacheIndex:
    table: FeatureTable
    images: Any = None

    @property
    def labels(self) -> np.ndarray:
        return self.table.labels

    @property
    def class_names(self) -> list[str]:
        return self.table.class_names

    @property
    def stamp(self) -> str:
        return str(self.table.provenance.get("cache.stamp", ""))

    @property
    def directory(self) -> Path | None:
        return self.table.path


def load_features(path: str | os.PathLike[str]) -> FeatureTable:
    """Read a feature file (tensors only: ``weights_only``); ``FeatureError`` names the file
    when it is missing or of another format. Provenance is not checked here: see
    :func:`check_current` / :func:`open_features`."""
    from subspace_fsl.engine.checkpoint import CheckpointError, torch_load_plain

    source = Path(path)
    if not source.is_file():
        raise FeatureError(
            f"feature file {source} does not exist; run `subspace-fsl embed` (the workflow's "
            f"embed rule) first"
        )
    try:
        state = torch_load_plain(source, "feature file")
    except CheckpointError as exc:
        raise FeatureError(str(exc)) from None
    if not isinstance(state, dict) or state.get("feature_format") != FORMAT_VERSION:
        raise FeatureError(
            f"{source} is not a feature file of format {FORMAT_VERSION}; run `subspace-fsl "
            f"embed` again"
        )
    return FeatureTable(
        features=state["features"],
        flipped=state.get("flipped"),
        stamp=str(state["stamp"]),
        labels=np.asarray(state["labels"].numpy(), dtype=np.int64),
        class_names=list(state["class_names"]),
        provenance=dict(state["provenance"]),
        path=source,
    )


def current_settings(
    cfg: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None = None,
    backbone_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """:func:`feature_settings` of the backbone checkpoint and image cache on disk now
    (the cache's ``meta.json`` only: no image is read)."""
    from subspace_fsl import paths

    cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir(cfg)
    meta_path = cache / "meta.json"
    if not meta_path.is_file():
        raise FeatureError(f"{meta_path} is missing: cannot check the feature file against the "
                           f"image cache; run `subspace-fsl prepare`")
    weights = Path(backbone_file) if backbone_file else paths.pretrained_backbone(cfg)
    if not weights.is_file():
        raise FeatureError(f"pre-trained backbone {weights} is missing: run the pretrain stage")
    return feature_settings(cfg, weights, json.loads(meta_path.read_text()))


def check_current(table: FeatureTable, current: Mapping[str, Any], need_flipped: bool) -> None:
    """Refuse a table made from another backbone checkpoint, cache or preprocessing
    (``provenance.ProvenanceError`` naming the file and the setting), or one without the
    mirrored rows this run needs."""
    from subspace_fsl.provenance import check

    wanted = {k: v for k, v in current.items() if k != "flipped"}
    check(table.path or "feature file", table.provenance, wanted,
          remedy="run `subspace-fsl embed` (the workflow's embed rule) to rebuild it")
    if need_flipped and table.flipped is None:
        table._flipped()


def open_features(
    cfg: Mapping[str, Any],
    features_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    backbone_file: str | os.PathLike[str] | None = None,
) -> FeatureTable:
    """The configuration's feature table, checked current (:func:`check_current`)."""
    from subspace_fsl import paths

    table = load_features(features_file or paths.features_path(cfg))
    check_current(table, current_settings(cfg, cache_dir, backbone_file), run_flips(cfg))
    return table


def embed_cache(
    backbone: torch.nn.Module, data: Any, batch_size: int, device: torch.device,
    mirror: bool = False,
) -> torch.Tensor:
    """``f(x_i)`` (``f(hflip(x_i))`` with ``mirror``) of every cache image, float32 on the
    CPU, in batches, eval mode, no gradient."""
    from subspace_fsl.engine.model import mirrored

    was_training = backbone.training
    backbone.eval()
    chunks = []
    n = len(data.labels)
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                images = data.images_to_tensor(np.arange(start, min(start + batch_size, n)),
                                               device)
                if mirror:
                    images = mirrored(images)
                chunks.append(backbone(images).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def build_features(
    cfg: Mapping[str, Any],
    out: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
    backbone_file: str | os.PathLike[str] | None = None,
    flipped: bool | None = None,
) -> FeatureTable:
    """Embed every cache image with the pretrain stage's backbone into ``out``
    (``paths.features_path``): reused when its provenance is current, rebuilt otherwise,
    written atomically (a partial file never exists under ``out``). ``flipped``: also the
    mirror images (None: when a run of ``cfg`` flips, :func:`needs_flipped`; the workflow
    passes it, its job's settings hold no grid)."""
    from subspace_fsl import paths
    from subspace_fsl.backbones import build_backbone
    from subspace_fsl.engine.checkpoint import save_checkpoint
    from subspace_fsl.engine.data import open_data
    from subspace_fsl.engine.pretrain import load_pretrained_backbone
    from subspace_fsl.provenance import ProvenanceError
    from subspace_fsl.runtime import configure

    target = Path(out) if out is not None else paths.features_path(cfg)
    weights = Path(backbone_file) if backbone_file else paths.pretrained_backbone(cfg)
    data = open_data(cfg, split_file=split_file, cache_dir=cache_dir)
    settings = feature_settings(cfg, weights, data.cache.meta, flipped)
    if target.is_file():
        try:
            table = load_features(target)
            check_current(table, settings, settings["flipped"])
            log.info("%s is current; nothing to do", target)
            return table
        except (FeatureError, ProvenanceError) as exc:
            log.info("rebuilding %s: %s", target, exc)
    runtime = configure(cfg)
    model = cfg["model"]
    backbone = build_backbone(model["backbone"], weights=None)
    load_pretrained_backbone(cfg, backbone, weights)
    backbone.to(runtime.device)
    batch = int(cfg["eval"]["batch_size"])
    features = embed_cache(backbone, data, batch, runtime.device)
    flipped = (
        embed_cache(backbone, data, batch, runtime.device, mirror=True)
        if settings["flipped"] else None
    )
    stamp = settings_digest(settings)
    class_names = [str(n) for n in data.cache.class_names]
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        {
            "feature_format": FORMAT_VERSION,
            "features": features.contiguous(),
            "flipped": None if flipped is None else flipped.contiguous(),
            "stamp": stamp,
            "labels": torch.tensor(np.array(data.labels), dtype=torch.long),
            "class_names": class_names,
            "provenance": settings,
        },
        target,
    )
    log.info("embedded %d images (%s) into %s", len(features),
             "with mirrors" if flipped is not None else "no mirrors", target)
    return FeatureTable(features, flipped, stamp, np.asarray(data.labels), class_names,
                        settings, target)


def feature_data(
    cfg: Mapping[str, Any], table: FeatureTable, split_file: str | os.PathLike[str] | None = None
) -> Any:
    """An ``engine.data.EngineData`` on a feature table (labels and class names from the
    table, the class split as ``open_data`` resolves it): what episode plans need."""
    from subspace_fsl.engine.data import EngineData, resolve_split

    split, path = resolve_split(cfg, split_file, table.class_names)
    return EngineData(cache=table.as_cache(), split=split, split_file=path)
