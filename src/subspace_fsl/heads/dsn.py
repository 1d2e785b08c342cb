"""DSN (Simon et al., CVPR 2020): affine class subspaces on the raw D-dim features.

    mu_c = mean_k x_{c,k};  U_c = basis of span{x_{c,k} - mu_c}  (K - 1 dimensions)
    D(q, c) = || (q - mu_c) - U_c U_c^T (q - mu_c) ||^2     (K = 1: ProtoNet's distance)
              or its root with ``distance: euclidean`` (the official code's default)
    l2 = sum_{i != j} ||U_i^T U_j||_F^2   (DSN's discriminative term as published: a sum, not
         averaged, so DSN's own lambda = 0.03 applies unchanged)

Differences from the official code (github.com/chrysts/dsn_fewshot) are listed with their
reasons in docs/method-core.md ("DSN as published").
"""

from __future__ import annotations

from torch import Tensor

from subspace_fsl.heads.base import (
    DISTANCE_FORMS,
    HEADS,
    FewShotHead,
    HeadOutput,
    compute_dtype,
    distance_form,
    full_precision,
)
from subspace_fsl.heads.subspaces import (
    basis_overlaps,
    class_bases,
    off_diagonal_sum,
    projection_distances,
)


@HEADS.register("dsn")
class DSNHead(FewShotHead):
    """Mean-centred (affine) class subspaces without a projection; l1 = 0."""

    def __init__(
        self, in_dim: int, tau: float = 1.0, learn_tau: bool = False, distance: str = "squared"
    ) -> None:
        super().__init__(tau, learn_tau)
        self.in_dim = in_dim
        self.distance = distance_form(distance)

    def validate_episode(self, way: int, shot: int) -> None:
        super().validate_episode(way, shot)
        if self.in_dim <= shot - 1:
            raise ValueError(f"in_dim ({self.in_dim}) must exceed shot - 1 ({shot - 1})")

    def forward(
        self, support_features: Tensor, support_labels: Tensor, query_features: Tensor
    ) -> HeadOutput:
        order, n_way, shot = self.check_inputs(support_features, support_labels, query_features)
        if support_features.shape[1] <= shot - 1:
            dim = support_features.shape[1]
            raise ValueError(f"feature dim ({dim}) must exceed shot - 1 ({shot - 1})")
        dtype = compute_dtype(support_features)
        with full_precision(support_features.device):
            support = support_features.to(dtype)[order].reshape(1, n_way, shot, -1)
            query = query_features.to(dtype)
            means = support.mean(dim=2, keepdim=True)  # [1, N, 1, D]
            bases_t = class_bases(support - means)
            squared = projection_distances(bases_t, query[None, None] - means)
            per_subspace = DISTANCE_FORMS[self.distance](squared)
            l2 = off_diagonal_sum(basis_overlaps(bases_t))
            l1 = l2.new_zeros(())
        return self.output(per_subspace, l1, l2)
