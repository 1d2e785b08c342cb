"""Evidence maps: the exact split over feature-map positions, checked in float64 against the
heads' own distances and against an independent gradient x activation computation."""

from __future__ import annotations

import logging

import pytest
import torch

from subspace_fsl.backbones import Conv4
from subspace_fsl.config import load_config
from subspace_fsl.engine.model import FewShotModel, build_model
from subspace_fsl.explain.maps import EXACT, GRADIENT, evidence_maps, gradient_maps
from subspace_fsl.heads import build_head


def _model(backbone: str, head: str, size: int) -> FewShotModel:
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.backbone={backbone}", f"model.head={head}",
                             f"dataset.image_size={size}", "model.n_subspaces=3",
                             "model.subspace_dim=6"])
    return build_model(cfg).double().eval()


def _episode(size: int, way: int = 3, shot: int = 2, queries: int = 4):
    generator = torch.Generator().manual_seed(1)
    support = torch.randn(way * shot, 3, size, size, dtype=torch.float64, generator=generator)
    order = torch.randperm(way * shot, generator=generator)
    labels = torch.arange(way).repeat_interleave(shot)[order]
    query = torch.randn(queries, 3, size, size, dtype=torch.float64, generator=generator)
    return support, labels, query


@pytest.mark.parametrize(("backbone", "head", "size", "cells"), [
    ("conv4", "multisubspace", 84, (5, 5)),     # Conv-4 flattens a 64 x 5 x 5 map at 84 px
    ("resnet12", "multisubspace", 32, (2, 2)),  # ResNet-12 average-pools its last map
    ("resnet18", "multisubspace", 64, (2, 2)),
    ("conv4", "dsn", 48, (3, 3)),               # affine class subspaces: the offset splits too
    ("conv4", "protonet", 32, (2, 2)),
])
def test_maps_sum_to_the_heads_distances_in_float64(backbone, head, size, cells):
    model = _model(backbone, head, size)
    support, labels, query = _episode(size)
    with torch.no_grad():
        reference = model.head(model.backbone(support), labels, model.backbone(query))
    result = evidence_maps(model, support, labels, query)
    assert result.exact and result.method == EXACT
    s = reference.per_subspace.shape[0]
    assert result.distance.shape == (4, s, 3, *cells) and result.distance.dtype == torch.float64
    sums = result.distance.sum(dim=(-2, -1)).permute(1, 0, 2)  # [S, Q, N]
    torch.testing.assert_close(sums, reference.per_subspace, rtol=1e-10, atol=1e-12)
    # the decision evidence sums to d(q, c2) - d(q, c1) >= 0 for the predicted c1, runner-up c2
    totals = reference.distances
    order = totals.argsort(dim=1)
    assert torch.equal(result.predicted, order[:, 0]) and torch.equal(result.runner_up, order[:, 1])
    rows = torch.arange(4)
    per = reference.per_subspace
    gap = per[:, rows, order[:, 1]] - per[:, rows, order[:, 0]]
    torch.testing.assert_close(result.evidence.sum(dim=(-2, -1)), gap.T, rtol=1e-10, atol=1e-12)
    assert (result.evidence.sum(dim=(1, 2, 3)) >= 0).all()


@pytest.mark.parametrize(("backbone", "size"), [("conv4", 84), ("resnet12", 32)])
def test_exact_maps_equal_half_gradient_times_activation(backbone, size):
    # multisubspace: d = f^T W^T M W f is a quadratic form of the last map A without offset,
    # so (1/2) sum_c A * dd/dA (Euler) must equal the exact split position by position
    model = _model(backbone, "multisubspace", size)
    support, labels, query = _episode(size)
    exact = evidence_maps(model, support, labels, query)
    reference = gradient_maps(model, support, labels, query)
    assert not reference.exact
    torch.testing.assert_close(exact.distance, reference.distance, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(exact.evidence, reference.evidence, rtol=1e-8, atol=1e-14)


class TanhConv4(Conv4):
    """A backbone whose output is not linear in its last map (tanh after flattening)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(images))


def test_a_backbone_without_a_linear_split_falls_back_to_gradients_and_says_so(caplog):
    torch.manual_seed(0)
    backbone = TanhConv4()
    head = build_head("multisubspace", backbone.output_dim(32), n_subspaces=2, subspace_dim=6)
    model = FewShotModel(backbone, head, backbone.output_dim(32)).double().eval()
    support, labels, query = _episode(32)
    with caplog.at_level(logging.INFO, logger="subspace_fsl.explain.maps"):
        result = evidence_maps(model, support, labels, query)
    assert not result.exact and result.method == GRADIENT
    assert "TanhConv4 has no linear position split" in caplog.text
    assert "gradient x activation" in caplog.text
    assert result.distance.shape == (4, 2, 3, 2, 2)
    assert torch.isfinite(result.distance).all()
    with torch.no_grad():
        reference = model.head(model.backbone(support), labels, model.backbone(query))
    torch.testing.assert_close(result.per_subspace, reference.per_subspace)
