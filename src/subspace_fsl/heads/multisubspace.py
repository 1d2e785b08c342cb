"""The method's head (docs/method.md, steps 202-205): S linear feature subspaces.

    z^s = W_s f(x)  (one Linear(D, S*d, bias=False))
    d_s(q, c) = || q_s - U_c^s U_c^{sT} q_s ||^2,   D(q, c) = sum_s d_s(q, c)
    L1 (rv)   = 1/(S(S-1)) sum_{i != j} <Z_i Z_i^T, Z_j Z_j^T>_F / (||Z_i Z_i^T||_F ||Z_j Z_j^T||_F)
    L1 (unnormalised) = sum_{i != j} ||Z_i^T Z_j||_F^2 / (S (S-1) (NK)^2)
    L2        = 1/(S N (N-1)) sum_s sum_{i != j} ||U_i^{sT} U_j^s||_F^2
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
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
    """[..., S, S] matrix of ||Z_i^T Z_j||_F^2, divided by ||Z_i^T Z_i||_F ||Z_j^T Z_j||_F for
    ``form="rv"`` (the RV coefficients, diagonal 1); support_z [..., S, NK, d]."""
    if form == "rv":
        # RV is scale-invariant per subspace: a detached rescale avoids overflow at 1e6.
        scale = support_z.detach().abs().amax(dim=(-2, -1), keepdim=True)
        support_z = support_z / torch.where(scale > 0, scale, torch.ones_like(scale))
    grams = support_z.mT @ support_z  # [..., S, d, d] = Z_s Z_s^T in method.md's column layout
    inner = torch.einsum("...iab,...jab->...ij", grams, grams)  # ||Z_i^T Z_j||_F^2
    if form == "rv":
        norms = inner.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(inner.dtype).tiny).sqrt()
        inner = inner / (norms[..., :, None] * norms[..., None, :])
    return inner


def feature_subspace_diversity(support_z: Tensor, form: str) -> Tensor:
    """L1 from the support data of every subspace, support_z [..., S, NK, d] (0 when S = 1);
    one value per leading index (a scalar for one head)."""
    s, nk, _ = support_z.shape[-3:]
    lead = support_z.dim() - 3
    if s == 1:
        return support_z.new_zeros(support_z.shape[:lead])
    inner = subspace_correlations(support_z, form)
    if form == "rv":
        return off_diagonal_sum(inner, keep=lead) / (s * (s - 1))
    return off_diagonal_sum(inner, keep=lead) / (s * (s - 1) * nk**2)


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
        per_subspace, l1, l2 = self.subspace_terms(support_z, support_labels, query_z)
        return self.output(per_subspace, l1, l2)

    def subspace_terms(
        self, support_z: Tensor, support_labels: Tensor, query_z: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(per_subspace [..., S, Q, N], L1 [...], L2 [...]) from support_z [..., S, N*K, d] and
        query_z [..., S, Q, d]; ``...`` is empty for one head, [C] for C cells."""
        order, n_way, shot = group_by_class(support_labels, support_z.shape[-2])
        if self.subspace_dim <= shot:
            raise ValueError(f"subspace_dim ({self.subspace_dim}) must exceed shot ({shot})")
        lead = support_z.shape[:-3]
        dtype = compute_dtype(support_z)
        with full_precision(support_z.device):
            support_z, query_z = support_z.to(dtype), query_z.to(dtype)
            classes = support_z[..., order, :].reshape(
                *lead, self.n_subspaces, n_way, shot, self.subspace_dim)
            bases_t = class_bases(classes)
            per_subspace = projection_distances(bases_t, query_z)
            if n_way > 1:
                pairs = n_way * (n_way - 1) * self.n_subspaces
                l2 = off_diagonal_sum(basis_overlaps(bases_t), keep=len(lead)) / pairs
            else:
                l2 = support_z.new_zeros(lead)
            l1 = feature_subspace_diversity(support_z, self.l1_form)
        return per_subspace, l1, l2

    def forward_cells(
        self, state: Mapping[str, Tensor], support_features: Tensor, support_labels: Tensor,
        query_features: Tensor,
    ) -> HeadOutput:
        """C heads of this structure on one episode in one batched pass (the cells of a grid
        group, engine/cells.py): ``state`` holds this head's parameters and buffers stacked
        along a leading cell dimension (``projection.weight`` [C, S*d, D], ``log_tau`` [C]).

            z_c = f(x) W_c^T  [C, S, n, d]  ->  logits_c = -sum_s d_s / tau_c  [C, Q, N]

        Every output gains the leading C (l1, l2: [C]); cell c's values are this head's
        ``forward`` with cell c's parameters (up to float reduction order).
        """
        self.check_shapes(support_features, query_features)
        weight = state["projection.weight"]
        cells, n_support = weight.shape[0], support_features.shape[0]
        x = torch.cat([support_features, query_features])
        # one GEMM against all cells' projections [C*S*d, D] (a bmm over cells is ~3x slower)
        z = F.linear(x, weight.flatten(0, 1))  # [n, C*S*d]
        z = z.view(x.shape[0], cells, self.n_subspaces, self.subspace_dim).permute(1, 2, 0, 3)
        per_subspace, l1, l2 = self.subspace_terms(
            z[:, :, :n_support], support_labels, z[:, :, n_support:])
        distances = per_subspace.sum(dim=1)
        logits = -distances / state["log_tau"].exp().to(distances.dtype)[:, None, None]
        return HeadOutput(logits, distances, per_subspace, l1, l2)
