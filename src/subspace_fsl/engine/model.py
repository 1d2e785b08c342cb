"""Backbone + head as one module: one backbone pass over an episode's support and queries."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: how a training episode's support and queries go through the backbone (``model.embed``)
EMBED_MODES = ("joint", "separate")
#: ``model.flip_support`` -> whether an episode with ``shot`` support images per class also
#: gets their horizontal mirror images (DSN as published: the 1-shot support is doubled, so a
#: class subspace has K - 1 = 1 direction instead of none)
FLIP_SUPPORT = {
    "never": lambda shot: False,
    "one_shot": lambda shot: shot == 1,
    "always": lambda shot: True,
}


def mirrored(images: torch.Tensor) -> torch.Tensor:
    """Left-right mirror of ``[..., H, W]`` images (torchvision's ``hflip``)."""
    return images.flip(-1)


def with_mirrored_support(
    support: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[x_1..x_n, hflip(x_1)..hflip(x_n)]`` with the labels repeated: K shots -> 2K."""
    return torch.cat([support, mirrored(support)]), torch.cat([labels, labels])


class FewShotModel(nn.Module):
    """``backbone`` maps images to features; ``head`` turns an episode's features into logits."""

    def __init__(
        self, backbone: nn.Module, head: nn.Module, feature_dim: int, embed: str = "joint",
        flip_support: str = "never",
    ) -> None:
        super().__init__()
        if embed not in EMBED_MODES:
            raise ValueError(f"embed must be one of {EMBED_MODES}, got {embed!r}")
        if flip_support not in FLIP_SUPPORT:
            raise ValueError(
                f"flip_support must be one of {list(FLIP_SUPPORT)}, got {flip_support!r}"
            )
        self.backbone = backbone
        self.head = head
        self.feature_dim = feature_dim
        self.embed = embed
        self.flip_support = flip_support

    def flips(self, shot: int) -> bool:
        """Whether episodes of ``shot`` support images per class add their mirror images."""
        return bool(FLIP_SUPPORT[self.flip_support](shot))

    def support_shot(self, shot: int) -> int:
        """Support features per class the head receives: ``2 shot`` when flipped."""
        return 2 * shot if self.flips(shot) else shot

    def forward(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> Any:
        """Embed support and queries (``embed="joint"``: one pass, shared batch statistics;
        ``"separate"``: support, then queries, each with its own batch statistics in training,
        as easyfsl and DSN's official code), then classify."""
        n_support = support.shape[0]
        if self.embed == "separate":
            features = torch.cat([self.backbone(support), self.backbone(query)], dim=0)
        else:
            features = self.backbone(torch.cat([support, query], dim=0))
        # heads solve small linear systems: keep them in float32, outside any bf16 autocast
        features = features.float()
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features[:n_support], support_labels, features[n_support:])

    def with_backbone(self, backbone: nn.Module) -> FewShotModel:
        """The same head and weights behind another backbone module (e.g. a compiled one)."""
        return FewShotModel(backbone, self.head, self.feature_dim, self.embed, self.flip_support)


def available_memory() -> int | None:
    """Bytes of host memory a new allocation can get now (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def check_head_size(head: nn.Module, settings: Mapping[str, Any], feature_dim: int,
                    backbone: str) -> None:
    """Refuse, before allocating, a head that cannot work or cannot fit in memory:

    - ``subspace_dim`` > D: a subspace of the D-dimensional feature space has at most D
      dimensions (only heads with a ``subspace_dim``);
    - parameters x 4 bytes (float32) > the memory available now.

    ``head`` is built on the meta device (shapes only, nothing allocated)."""
    subspace_dim = getattr(head, "subspace_dim", None)
    if subspace_dim is not None and subspace_dim > feature_dim:
        raise ValueError(
            f"model.subspace_dim={subspace_dim} exceeds the backbone's feature dim D="
            f"{feature_dim} ({backbone} at this dataset.image_size): a subspace of R^{feature_dim}"
            f" has at most {feature_dim} dimensions"
        )
    n_params = sum(t.numel() for t in (*head.parameters(), *head.buffers()))
    needed, available = 4 * n_params, available_memory()
    if available is not None and needed > available:
        sizes = ", ".join(f"model.{k}={settings[k]}" for k in ("n_subspaces", "subspace_dim")
                          if k in settings)
        raise ValueError(
            f"the head cannot be allocated: {sizes} on D={feature_dim} features is "
            f"{n_params:,} parameters ({_gb(needed)} in float32), but only {_gb(available)} "
            f"of memory is available; lower model.n_subspaces or model.subspace_dim"
        )


def build_model(cfg: Mapping[str, Any]) -> FewShotModel:
    """The configured backbone and head; unknown names fail with the offending key and value,
    a head too large for the features or for memory before anything is allocated."""
    from subspace_fsl.backbones import BACKBONES, build_backbone
    from subspace_fsl.heads import HEADS, build_head

    settings = cfg["model"]
    for key, registry in (("backbone", BACKBONES), ("head", HEADS)):
        try:
            registry.get(settings[key])
        except ValueError as exc:
            raise ValueError(f"model.{key}={settings[key]!r}: {exc}") from None
    backbone = build_backbone(settings["backbone"], weights=settings["backbone_weights"])
    feature_dim = int(backbone.output_dim(cfg["dataset"]["image_size"]))
    model_keys = {
        k: v
        for k, v in settings.items()
        if k not in ("backbone", "backbone_weights", "head", "embed", "flip_support")
    }
    try:
        with torch.device("meta"):  # shapes only: check the size before allocating
            shape_only = build_head(settings["head"], feature_dim, **model_keys)
        check_head_size(shape_only, settings, feature_dim, settings["backbone"])
        head = build_head(settings["head"], feature_dim, **model_keys)
    except ValueError as exc:
        raise ValueError(f"model.head={settings['head']!r}: {exc}") from None
    return FewShotModel(backbone, head, feature_dim, settings.get("embed", "joint"),
                        settings.get("flip_support", "never"))


def check_head_episode(
    model: FewShotModel, way: int, shot: int, episode: str, settings: Mapping[str, Any]
) -> None:
    """The head's own check of an episode shape (e.g. subspace_dim <= shot), naming the keys.

    ``episode`` says where way and shot come from (``"train.way=5, train.shot=1"``);
    ``settings`` is the ``model`` section the head was built from. With the support flipped
    (``model.flip_support``) the head sees ``2 shot`` support features per class."""
    if model.flips(shot):
        episode = f"{episode} (x2 with model.flip_support={model.flip_support!r})"
    try:
        model.head.validate_episode(way, model.support_shot(shot))
    except ValueError as exc:
        head = ", ".join(
            f"model.{k}={settings[k]!r}" for k in ("head", "n_subspaces", "subspace_dim")
        )
        raise ValueError(f"{episode} does not fit {head}: {exc}") from None
