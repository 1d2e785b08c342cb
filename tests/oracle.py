"""Literal reference for docs/method.md: per-class SVD loops, sums written out, float64.

Deliberately plain and slow; the package's batched heads are checked against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64


def svd_basis(columns: Tensor, max_rank: int | None = None) -> Tensor:
    """Orthonormal basis [d, r] of span(columns [d, K]): thin SVD, rank-revealing truncation."""
    u, s, _ = torch.linalg.svd(columns, full_matrices=False)
    if s.numel() == 0 or s.max() == 0:
        return u[:, :0]
    tol = s.max() * max(columns.shape) * torch.finfo(columns.dtype).eps
    rank = int((s > tol).sum())
    if max_rank is not None:
        rank = min(rank, max_rank)
    return u[:, :rank]


def residual(q: Tensor, basis: Tensor) -> Tensor:
    r = q - basis @ (basis.T @ q)
    return (r * r).sum()


def class_columns(features: Tensor, labels: Tensor, c: int) -> Tensor:
    return features[labels == c].T  # [dim, K]


def multisubspace(weight: Tensor, support: Tensor, labels: Tensor, query: Tensor,
                  n_subspaces: int, subspace_dim: int, tau: float = 1.0,
                  l1_form: str = "rv") -> dict[str, Tensor]:
    weight, support, query = weight.to(F64), support.to(F64), query.to(F64)
    n_way = int(labels.max()) + 1
    n_support = support.shape[0]
    S, d = n_subspaces, subspace_dim
    w = [weight[s * d:(s + 1) * d] for s in range(S)]  # W_s [d, D]
    per = torch.zeros(S, query.shape[0], n_way, dtype=F64)
    bases = []
    for s in range(S):
        z_support = support @ w[s].T
        bases_s = [svd_basis(class_columns(z_support, labels, c)) for c in range(n_way)]
        bases.append(bases_s)
        for qi in range(query.shape[0]):
            q = w[s] @ query[qi]
            for c in range(n_way):
                per[s, qi, c] = residual(q, bases_s[c])
    l2 = torch.zeros((), dtype=F64)
    for s in range(S):
        for i in range(n_way):
            for j in range(n_way):
                if i != j:
                    l2 = l2 + (bases[s][i].T @ bases[s][j]).pow(2).sum()
    l2 = l2 / (S * n_way * (n_way - 1)) if n_way > 1 else l2
    z = [w[s] @ support.T for s in range(S)]  # Z_s [d, NK] as in method.md
    l1 = torch.zeros((), dtype=F64)
    for i in range(S):
        for j in range(S):
            if i == j:
                continue
            num = (z[i].T @ z[j]).pow(2).sum()
            if l1_form == "rv":
                den = torch.linalg.norm(z[i].T @ z[i]) * torch.linalg.norm(z[j].T @ z[j])
                l1 = l1 + num / den
            else:
                l1 = l1 + num / n_support**2
    l1 = l1 / (S * (S - 1)) if S > 1 else l1
    distances = per.sum(0)
    return {"per_subspace": per, "distances": distances, "logits": -distances / tau,
            "l1": l1, "l2": l2}


def protonet(support: Tensor, labels: Tensor, query: Tensor) -> Tensor:
    support, query = support.to(F64), query.to(F64)
    n_way = int(labels.max()) + 1
    out = torch.zeros(query.shape[0], n_way, dtype=F64)
    for qi in range(query.shape[0]):
        for c in range(n_way):
            mean = support[labels == c].mean(0)
            out[qi, c] = ((query[qi] - mean) ** 2).sum()
    return out


def dsn(support: Tensor, labels: Tensor, query: Tensor) -> dict[str, Tensor]:
    """DSN: mean-centred SVD subspaces of (at most) K - 1 dimensions; summed discriminative term."""
    support, query = support.to(F64), query.to(F64)
    n_way = int(labels.max()) + 1
    means, bases = [], []
    for c in range(n_way):
        x = class_columns(support, labels, c)
        mean = x.mean(1, keepdim=True)
        means.append(mean[:, 0])
        bases.append(svd_basis(x - mean, max_rank=x.shape[1] - 1))
    out = torch.zeros(query.shape[0], n_way, dtype=F64)
    for qi in range(query.shape[0]):
        for c in range(n_way):
            out[qi, c] = residual(query[qi] - means[c], bases[c])
    l2 = torch.zeros((), dtype=F64)
    for i in range(n_way):
        for j in range(n_way):
            if i != j:
                l2 = l2 + (bases[i].T @ bases[j]).pow(2).sum()
    return {"distances": out, "l2": l2}
