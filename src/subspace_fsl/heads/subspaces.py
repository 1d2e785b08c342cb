"""Batched class subspaces for every (subspace, class) pair at once.

For the support columns X of one class (rows of ``x`` [..., K, d]) the class subspace is
span(X) and its projection P = U U^T with U an orthonormal basis (thin SVD in method.md).
Without any SVD: with G = X X^T (K x K) and its Cholesky factor L L^T = G + eps I,

    U^T = L^{-1} X            so that   U U^T = X^T (G + eps I)^{-1} X.

In the SVD basis this is sum_k sigma_k^2 / (sigma_k^2 + eps) u_k u_k^T: every direction with
a non-negligible singular value is kept (error eps / sigma^2) and a direction with sigma = 0
(a duplicated support image, the mean-centred null direction) adds nothing. This is the
rank-revealing projection up to O(eps), with eps = 4 * machine-eps * trace(G): the solve has
smooth gradients where SVD / eigh backward divide by equal singular values (NaN).

Distances: d(q, c) = || q - U_c U_c^T q ||^2 = ||q||^2 - ||U_c^T q||^2 (U_c^T q is only
K numbers per query, so no [S, N, Q, d] residual is formed; rounding leaves an absolute error
of a few eps * ||q||^2, clamped at 0).
Overlap: ||U_i^T U_j||_F^2 = trace(P_i P_j), the squared cosines of the principal angles.
"""

from __future__ import annotations

import torch
from torch import Tensor

JITTER = 4.0  # ridge eps = JITTER * machine-eps * trace(G) on the scale-normalised Gram


def class_bases(x: Tensor) -> Tensor:
    """Row bases U^T [..., K, d] of the class subspaces spanned by the rows of x [..., K, d].

    Rows of the result are orthonormal where x has full rank and vanish along directions
    x does not span. Works in x's dtype (float32 / float64).
    """
    # The projection is scale-invariant, so divide by a detached per-class scale: the Gram
    # stays near 1 whether features are 1e-6 or 1e6 (no under/overflow in G or its inverse).
    scale = x.detach().abs().amax(dim=(-2, -1), keepdim=True)
    xn = x / scale.clamp_min(torch.finfo(x.dtype).tiny)  # an all-zero class stays zero
    gram = xn @ xn.mT
    k = gram.shape[-1]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    # trace >= 1 unless the class is all zeros; the floor keeps the ridge positive then.
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1.0)[..., None, None]
    eps = torch.finfo(gram.dtype).eps * JITTER
    for factor in (1.0, 1e2, 1e4):  # escalate only if rounding made G + eps I indefinite
        chol, info = torch.linalg.cholesky_ex(gram + (eps * factor) * trace * eye)
        try:
            failed = bool(info.any())
        except RuntimeError:  # under torch.func.vmap (cells trained together, engine/cells.py)
            return torch.linalg.solve_triangular(_per_matrix(gram, eps * trace * eye), xn,
                                                 upper=False)
        if not failed:
            break
    else:
        if not bool(torch.isfinite(x).all()):
            raise ValueError("support features contain NaN or inf")
        raise RuntimeError("Cholesky factorisation of the class Gram matrices failed")
    return torch.linalg.solve_triangular(chol, xn, upper=False)


def _per_matrix(gram: Tensor, ridge: Tensor) -> Tensor:
    """The escalation of :func:`class_bases` without a data-dependent branch (vmap): each
    matrix takes the first ridge factor whose Cholesky succeeds. Where the first succeeds
    for every matrix (the usual case) this is exactly the loop's factor."""
    chol, info = torch.linalg.cholesky_ex(gram + ridge)
    for factor in (1e2, 1e4):
        retry, retry_info = torch.linalg.cholesky_ex(gram + factor * ridge)
        redo = (info != 0)[..., None, None]
        chol = torch.where(redo, retry, chol)
        info = torch.where(info != 0, retry_info, info)
    return chol


def projection_distances(bases_t: Tensor, queries: Tensor) -> Tensor:
    """Squared residuals || q - U U^T q ||^2.

    bases_t [..., S, N, K, d] (from ``class_bases``); queries [..., S, Q, d] (shared by all
    classes) or [..., S, N, Q, d] (one offset per class, e.g. q - mean_c). Returns
    [..., S, Q, N]; ``...`` is any batch of heads (cells trained together, engine/cells.py).
    """
    if queries.dim() == bases_t.dim() - 1:
        queries = queries.unsqueeze(-3)  # [..., S, 1, Q, d]
    coefficients = queries @ bases_t.mT  # [..., S, N, Q, K]
    distances = queries.square().sum(-1) - coefficients.square().sum(-1)
    return distances.clamp_min(0).transpose(-2, -1)


def basis_overlaps(bases_t: Tensor) -> Tensor:
    """||U_i^T U_j||_F^2 for every pair of classes, [..., S, N, N] (diagonal = class ranks)."""
    *lead, n, k, _ = bases_t.shape
    flat = bases_t.flatten(-3, -2)  # [..., S, N*K, d]
    cross = (flat @ flat.mT).reshape(*lead, n, k, n, k)
    return cross.square().sum(dim=(-3, -1))


def off_diagonal_sum(pairs: Tensor, keep: int = 0) -> Tensor:
    """Sum of pairs[..., i, j] over i != j (the last two dims) and over every other dim but
    the first ``keep`` (``keep=1``: one sum per cell of a stack, shape [C])."""
    if keep == 0:
        return pairs.sum() - pairs.diagonal(dim1=-2, dim2=-1).sum()
    per_matrix = pairs.sum(dim=(-2, -1)) - pairs.diagonal(dim1=-2, dim2=-1).sum(-1)
    return per_matrix.reshape(*per_matrix.shape[:keep], -1).sum(-1)
