"""Per-subspace evidence maps: where on the image each feature subspace finds its distance.

Every head's distance is a quadratic form of the query's feature vector f (docs/method-core.md,
"Evidence maps"):

    d_s(q, c) = (z_s - m_c^s)^T M_c^s (z_s - m_c^s),   z_s = W_s f(q),
    M_c^s = I - U_c^s U_c^{sT} (the head's own class_bases),   m_c^s the class offset

(multisubspace: W_s its projection, m = 0; DSN: W = I, m = class mean; ProtoNet: W = I,
M = I, m = class mean). The built-in backbones make f linear in their last feature map A
[C, H, W]: Conv-4 flattens it, ResNet-12 and ResNet-18 average-pool it. So f = sum_p f_p
with f_p the contribution of position p (Conv-4: A's column p in its flattened slots;
pooling: A[:, p] / HW), and with the residual r = M (z - m):

    d_s(q, c) = sum_p < W_s f_p - m / HW, r >          (exact: the maps sum to the distance)

computed for all queries, subspaces, classes and positions in one einsum. The decision's
evidence map is e_s,p = d_s,p(q, c2) - d_s,p(q, c1) with c1 the predicted class and c2 the
runner-up: positive where the image looks more like c1 than like c2 to subspace s.

Where the split does not apply (a backbone with no entry in :data:`POSITION_SPLITS`, e.g. one
with a nonlinearity after its last map, or a head without an entry in :data:`GEOMETRIES`),
``evidence_maps`` falls back to gradient x activation on the backbone's last 4-D activation,
(1/2) sum_c A ⊙ dd/dA, which equals the exact map whenever d is a quadratic form of A (no
offset) and is an approximation otherwise; the result says so (``exact = False``) and a log
line names the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from subspace_fsl.backbones import Conv4, ResNet12, ResNet18
from subspace_fsl.heads.base import compute_dtype, group_by_class
from subspace_fsl.heads.dsn import DSNHead
from subspace_fsl.heads.multisubspace import MultiSubspaceHead
from subspace_fsl.heads.protonet import ProtoNetHead
from subspace_fsl.heads.subspaces import class_bases

log = logging.getLogger(__name__)

EXACT = "exact"
GRADIENT = "gradient x activation"


# --- backbones: last feature map and its split over positions ----------------------------


def _conv4_map(backbone: nn.Module, images: Tensor) -> Tensor:
    backbone.check_images(images)
    return backbone.features(images)


def _resnet12_map(backbone: nn.Module, images: Tensor) -> Tensor:
    backbone.check_images(images)
    return backbone.blocks(images)


def _resnet18_map(backbone: nn.Module, images: Tensor) -> Tensor:
    backbone.check_images(images)
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
    return backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))


def flatten_split(feature_map: Tensor) -> Tensor:
    """Conv-4: f = vec(A) (channel-major), so f_p keeps A[:, p] in its slots c * HW + p and
    zeros elsewhere: [B, C, H, W] -> [B, HW, C * HW], sum over positions = f."""
    b, c, h, w = feature_map.shape
    positions = h * w
    eye = torch.eye(positions, dtype=feature_map.dtype, device=feature_map.device)
    return torch.einsum("bcq,pq->bpcq", feature_map.reshape(b, c, positions), eye).reshape(
        b, positions, c * positions
    )


def mean_pool_split(feature_map: Tensor) -> Tensor:
    """Global average pooling: f = (1/HW) sum_p A[:, p], so f_p = A[:, p] / HW: [B, HW, C]."""
    b, c, h, w = feature_map.shape
    return feature_map.reshape(b, c, h * w).mT / (h * w)


@dataclass(frozen=True)
class PositionSplit:
    """How a backbone makes its feature vector from its last map (both functions batched)."""

    feature_map: Callable[[nn.Module, Tensor], Tensor]  # images -> A [B, C, H, W]
    split: Callable[[Tensor], Tensor]  # A -> f_p [B, HW, D], sum_p f_p = f


#: backbone class -> its exact split (a backbone not listed gets the gradient fallback)
POSITION_SPLITS: dict[type, PositionSplit] = {
    Conv4: PositionSplit(_conv4_map, flatten_split),
    ResNet12: PositionSplit(_resnet12_map, mean_pool_split),
    ResNet18: PositionSplit(_resnet18_map, mean_pool_split),
}


# --- heads: the quadratic form of each distance ------------------------------------------


@dataclass
class Geometry:
    """d_s(q, c) = (W_s f - m)^T (I - U^T' U') (W_s f - m) for every (s, c) of an episode."""

    project: Callable[[Tensor], Tensor]  # [n, D] -> [S, n, d], linear (no bias)
    means: Tensor  # [S, N, d] class offsets m_c^s
    bases_t: Tensor  # [S, N, K, d] row bases U^T (the head's class_bases)


def _multisubspace(head: MultiSubspaceHead, support: Tensor, labels: Tensor) -> Geometry:
    order, n_way, shot = group_by_class(labels, support.shape[0])
    project = head.project
    z = project(support)
    classes = z[:, order].reshape(head.n_subspaces, n_way, shot, head.subspace_dim)
    means = classes.new_zeros(head.n_subspaces, n_way, head.subspace_dim)
    return Geometry(project, means, class_bases(classes))


def _identity(features: Tensor) -> Tensor:
    return features[None]


def _dsn(head: DSNHead, support: Tensor, labels: Tensor) -> Geometry:
    order, n_way, shot = group_by_class(labels, support.shape[0])
    grouped = support[order].reshape(1, n_way, shot, -1)
    means = grouped.mean(dim=2, keepdim=True)
    return Geometry(_identity, means[:, :, 0], class_bases(grouped - means))


def _protonet(head: ProtoNetHead, support: Tensor, labels: Tensor) -> Geometry:
    order, n_way, shot = group_by_class(labels, support.shape[0])
    means = support[order].reshape(1, n_way, shot, -1).mean(dim=2)
    return Geometry(_identity, means, means.new_zeros(1, n_way, 0, means.shape[-1]))


#: head class -> its geometry (a head not listed gets the gradient fallback)
GEOMETRIES: dict[type, Callable[..., Geometry]] = {
    MultiSubspaceHead: _multisubspace,
    DSNHead: _dsn,
    ProtoNetHead: _protonet,
}


# --- the maps ----------------------------------------------------------------------------


@dataclass
class EvidenceMaps:
    """Evidence maps of one episode's queries over the last feature map's H x W positions."""

    distance: Tensor  # [Q, S, N, H, W]: position p's part of d_s(q, c); sums to per_subspace
    evidence: Tensor  # [Q, S, H, W]: d_s,p(q, c2) - d_s,p(q, c1), c1 predicted, c2 runner-up
    per_subspace: Tensor  # [S, Q, N]: the distances the maps sum to
    predicted: Tensor  # [Q] c1 = argmin_c sum_s d_s(q, c)
    runner_up: Tensor  # [Q] c2
    exact: bool  # True: the linear split; False: gradient x activation
    method: str  # EXACT or GRADIENT


def distance_maps(geometry: Geometry, parts: Tensor) -> tuple[Tensor, Tensor]:
    """Exact per-position distances from the position contributions f_p, parts [Q, P, D].

    Returns (maps [Q, S, N, P], distances [S, Q, N]) with maps.sum(-1) = distances:
    maps[q, s, c, p] = < W_s f_p - m_c^s / P, r >,  r = M_c^s (W_s f - m_c^s).
    """
    q, p, d_in = parts.shape
    z_parts = geometry.project(parts.reshape(q * p, d_in))  # [S, Q*P, d] (linear, no bias)
    z_parts = z_parts.reshape(z_parts.shape[0], q, p, -1)
    z = z_parts.sum(dim=2)  # [S, Q, d] = W_s f
    centred = z[:, None] - geometry.means[:, :, None]  # [S, N, Q, d]
    coefficients = centred @ geometry.bases_t.mT  # [S, N, Q, K]
    residual = centred - coefficients @ geometry.bases_t  # r = M (z - m)
    maps = torch.einsum("sqpd,snqd->qsnp", z_parts, residual)
    offsets = torch.einsum("snd,snqd->qsn", geometry.means, residual) / p
    maps = maps - offsets[..., None]
    distances = torch.einsum("snqd,snqd->sqn", centred, residual)
    return maps, distances


def decision_evidence(maps: Tensor, per_subspace: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(evidence [Q, S, ...], predicted [Q], runner-up [Q]) from maps [Q, S, N, ...]:
    evidence = maps[:, :, c2] - maps[:, :, c1] (it sums to d(q, c2) - d(q, c1) >= 0)."""
    totals = per_subspace.sum(dim=0)  # [Q, N]
    ranked = totals.argsort(dim=1, stable=True)
    predicted, runner_up = ranked[:, 0], ranked[:, min(1, ranked.shape[1] - 1)]
    shape = (maps.shape[0], maps.shape[1], 1, *maps.shape[3:])
    first = maps.gather(2, predicted.view(-1, 1, 1, *[1] * (maps.dim() - 3)).expand(shape))
    second = maps.gather(2, runner_up.view(-1, 1, 1, *[1] * (maps.dim() - 3)).expand(shape))
    return (second - first)[:, :, 0], predicted, runner_up


def exact_supported(model: nn.Module) -> str | None:
    """None when the model's backbone and head have an exact split, else the reason."""
    if type(model.backbone) not in POSITION_SPLITS:
        return f"backbone {type(model.backbone).__name__} has no linear position split"
    if type(model.head) not in GEOMETRIES:
        return f"head {type(model.head).__name__} has no quadratic-form geometry"
    return None


def evidence_maps(
    model: nn.Module,
    support_images: Tensor,
    support_labels: Tensor,
    query_images: Tensor,
    *,
    support_features: Tensor | None = None,
    query_map: Tensor | None = None,
) -> EvidenceMaps:
    """Evidence maps of ``query_images`` against the episode's support set (eval mode).

    ``support_features`` [N*K, D] and ``query_map`` [Q, C, H, W] (the last feature map) may
    be given when already computed (explain embeds every image once); the model must be in
    eval mode. Computed in float64 when the model is float64, else float32.
    """
    reason = exact_supported(model)
    if reason is not None:
        log.info("evidence maps: %s; using %s (approximate)", reason, GRADIENT)
        return gradient_maps(model, support_images, support_labels, query_images)
    split = POSITION_SPLITS[type(model.backbone)]
    with torch.no_grad():
        if support_features is None:
            support_features = model.backbone(support_images)
        if query_map is None:
            query_map = split.feature_map(model.backbone, query_images)
        dtype = compute_dtype(query_map)
        support_features = support_features.to(dtype)
        parts = split.split(query_map.to(dtype))
        geometry = GEOMETRIES[type(model.head)](model.head, support_features, support_labels)
        maps, distances = distance_maps(geometry, parts)
        h, w = query_map.shape[-2:]
        maps = maps.reshape(*maps.shape[:3], h, w)
        evidence, predicted, runner_up = decision_evidence(maps, distances)
    return EvidenceMaps(maps, evidence, distances, predicted, runner_up, True, EXACT)


def _last_map(backbone: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(features [B, D], the last 4-D activation a module produced [B, C, H, W])."""
    found: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor) and output.dim() == 4:
            found.append(output)

    handles = [m.register_forward_hook(keep) for m in backbone.modules() if m is not backbone]
    try:
        features = backbone(images)
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise ValueError(f"backbone {type(backbone).__name__} produced no 4-D feature map")
    return features, found[-1]


def gradient_maps(
    model: nn.Module, support_images: Tensor, support_labels: Tensor, query_images: Tensor
) -> EvidenceMaps:
    """Fallback: maps[q, s, c] = (1/2) sum_channels A ⊙ d d_s(q, c) / dA on the backbone's
    last 4-D activation A (exact for a quadratic form of A without offset)."""
    with torch.no_grad():
        support_features = model.backbone(support_images)
    with torch.enable_grad():
        features, activation = _last_map(model.backbone, query_images)
        per_subspace = model.head(support_features, support_labels, features).per_subspace
        s, q, n = per_subspace.shape
        # one vector-Jacobian product per (s, c) pair, batched: the queries are independent
        # in eval mode, so d/dA of sum_q d_s(q, c) gives every query's own gradient
        outputs = per_subspace.sum(dim=1).reshape(-1)  # [S*N]
        eye = torch.eye(s * n, dtype=outputs.dtype, device=outputs.device)
        (grads,) = torch.autograd.grad(outputs, activation, eye, is_grads_batched=True)
    maps = 0.5 * (grads * activation.detach()).sum(dim=2)  # [S*N, Q, H, W]
    maps = maps.reshape(s, n, q, *maps.shape[-2:]).permute(2, 0, 1, 3, 4)
    per_subspace = per_subspace.detach()
    evidence, predicted, runner_up = decision_evidence(maps, per_subspace)
    return EvidenceMaps(maps, evidence, per_subspace, predicted, runner_up, False, GRADIENT)
