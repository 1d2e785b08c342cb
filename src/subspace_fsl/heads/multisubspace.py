"""The method's head (docs/method.md, steps 202-205): S linear feature subspaces.

    z^s = W_s f(x)  (one Linear(D, S*d, bias=False))
    d_s(q, c) = || q_s - U_c^s U_c^{sT} q_s ||^2,   D(q, c) = sum_s d_s(q, c)
    L1 (rv)   = 1/(S(S-1)) sum_{i != j} <Z_i Z_i^T, Z_j Z_j^T>_F / (||Z_i Z_i^T||_F ||Z_j Z_j^T||_F)
    L1 (unnormalised) = sum_{i != j} ||Z_i^T Z_j||_F^2 / (S (S-1) (NK)^2)
    L2        = 1/(S N (N-1)) sum_s sum_{i != j} ||U_i^{sT} U_j^s||_F^2
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subspace_fsl.heads.base import (
    HEADS,
    FewShotHead,
    HeadOutput,
    compute_dtype,
    full_precision,
    group_by_class,
    warn,
)
from subspace_fsl.heads.subspaces import (
    basis_overlaps,
    class_bases,
    off_diagonal_sum,
    projection_distances,
)

L1_FORMS = ("rv", "unnormalised")


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def subspace_correlations(support_z: Tensor, form: str = "rv") -> Tensor:
    """[S, S] matrix of ||Z_i^T Z_j||_F^2, divided by ||Z_i^T Z_i||_F ||Z_j^T Z_j||_F for
    ``form="rv"`` (the RV coefficients, diagonal 1); support_z [S, NK, d]."""
    if form == "rv":
        # RV is scale-invariant per subspace: a detached rescale avoids overflow at 1e6.
        scale = support_z.detach().abs().amax(dim=(1, 2), keepdim=True)
        support_z = support_z / torch.where(scale > 0, scale, torch.ones_like(scale))
    grams = support_z.mT @ support_z  # [S, d, d] = Z_s Z_s^T in method.md's column layout
    inner = torch.einsum("iab,jab->ij", grams, grams)  # ||Z_i^T Z_j||_F^2
    if form == "rv":
        norms = inner.diagonal().clamp_min(torch.finfo(inner.dtype).tiny).sqrt()
        inner = inner / (norms[:, None] * norms[None, :])
    return inner


def feature_subspace_diversity(support_z: Tensor, form: str) -> Tensor:
    """L1 from the support data of every subspace, support_z [S, NK, d] (0 when S = 1)."""
    s, nk, _ = support_z.shape
    if s == 1:
        return support_z.new_zeros(())
    inner = subspace_correlations(support_z, form)
    if form == "rv":
        return off_diagonal_sum(inner) / (s * (s - 1))
    return off_diagonal_sum(inner) / (s * (s - 1) * nk**2)


@HEADS.register("multisubspace")
class MultiSubspaceHead(FewShotHead):
    """S feature subspaces, a linear class subspace per class in each, summed distances."""

    def __init__(
        self,
        in_dim: int,
        n_subspaces: int,
        subspace_dim: int,
        tau: float = 1.0,
        learn_tau: bool = False,
        l1_form: str = "rv",
    ) -> None:
        super().__init__(tau, learn_tau)
        self.in_dim = _positive_int("in_dim", in_dim)
        self.n_subspaces = _positive_int("n_subspaces", n_subspaces)
        self.subspace_dim = _positive_int("subspace_dim", subspace_dim)
        if l1_form not in L1_FORMS:
            raise ValueError(f"l1_form must be one of {L1_FORMS}, got {l1_form!r}")
        self.l1_form = l1_form
        self.projection = nn.Linear(in_dim, n_subspaces * subspace_dim, bias=False)

    def project(self, features: Tensor) -> Tensor:
        """z^s = W_s f(x) for every subspace: [n, D] -> [S, n, d]."""
        z = self.projection(features)
        return z.view(features.shape[0], self.n_subspaces, self.subspace_dim).transpose(0, 1)

    def validate_episode(self, way: int, shot: int) -> None:
        super().validate_episode(way, shot)
        if self.subspace_dim <= shot:
            raise ValueError(
                f"subspace_dim ({self.subspace_dim}) must exceed shot ({shot}): otherwise each "
                "class subspace is the whole feature subspace and every distance is 0"
            )
        if self.subspace_dim < way * shot:
            warn(
                f"subspace_dim ({self.subspace_dim}) < way * shot ({way * shot}): the class "
                "subspaces of an episode cannot be mutually orthogonal, so L2 cannot reach 0"
            )

    def forward(
        self, support_features: Tensor, support_labels: Tensor, query_features: Tensor
    ) -> HeadOutput:
        self.check_shapes(support_features, query_features)
        if support_features.shape[1] != self.in_dim:
            dim = support_features.shape[1]
            raise ValueError(f"features have D = {dim}, head expects in_dim = {self.in_dim}")
        n_support = support_features.shape[0]
        z = self.project(torch.cat([support_features, query_features]))
        return self.from_projections(z[:, :n_support], support_labels, z[:, n_support:])

    def from_projections(
        self, support_z: Tensor, support_labels: Tensor, query_z: Tensor
    ) -> HeadOutput:
        """Everything after ``project``: support_z [S, N*K, d], query_z [S, Q, d]."""
        order, n_way, shot = group_by_class(support_labels, support_z.shape[1])
        if self.subspace_dim <= shot:
            raise ValueError(f"subspace_dim ({self.subspace_dim}) must exceed shot ({shot})")
        dtype = compute_dtype(support_z)
        with full_precision(support_z.device):
            support_z, query_z = support_z.to(dtype), query_z.to(dtype)
            classes = support_z[:, order].reshape(self.n_subspaces, n_way, shot, self.subspace_dim)
            bases_t = class_bases(classes)
            per_subspace = projection_distances(bases_t, query_z)
            if n_way > 1:
                pairs = n_way * (n_way - 1) * self.n_subspaces
                l2 = off_diagonal_sum(basis_overlaps(bases_t)) / pairs
            else:
                l2 = support_z.new_zeros(())
            l1 = feature_subspace_diversity(support_z, self.l1_form)
        return self.output(per_subspace, l1, l2)
