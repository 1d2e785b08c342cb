"""What each feature subspace looks at, measured against annotated parts.

For a query's evidence map e_s (``maps.EvidenceMaps.evidence``, over the H x W cells of the
last feature map; cell p's centre c_p in image pixels) and its visible parts k at x_k:

    share[s, k]   = sum_p e_s,p^+ [ ||c_p - x_k|| <= radius ] / sum_p e_s,p^+
    profile[s, :] = mean over queries of share[s, :] (invisible parts left out), normalised
                    to sum 1 over the parts
    specialization[s] = 1 - H(profile[s]) / log K           (1: one part only, 0: uniform)
    diversity     = mean over pairs s < t of JSD_2(profile[s], profile[t])   (base 2, in [0, 1])

Also, from an episode's support projections and class bases: the RV matrix of L1
(``heads.multisubspace.subspace_correlations``; mean RV = the off-diagonal mean) and the
principal angles between the class subspaces of each feature subspace (arccos of the
singular values of U_i U_j^T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def cell_centres(height: int, width: int, image_size: int) -> Tensor:
    """Centres (x, y) [H*W, 2] of the map cells in image pixels: cell (i, j) covers
    [j W_img / W, (j + 1) W_img / W) x [i H_img / H, (i + 1) H_img / H)."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * image_size / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * image_size / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def part_shares(
    evidence: Tensor, parts_xy: Tensor, visible: Tensor, image_size: int, radius: float
) -> Tensor:
    """share [Q, S, K] of each subspace's positive evidence within ``radius`` pixels of each
    part; NaN where the part is invisible or the map has no positive mass.

    evidence [Q, S, H, W]; parts_xy [Q, K, 2] (x, y); visible [Q, K] bool.
    """
    q, s, h, w = evidence.shape
    positive = evidence.to(torch.float64).clamp_min(0).reshape(q, s, h * w)
    centres = cell_centres(h, w, image_size).to(positive.device)
    distance = torch.cdist(parts_xy.to(positive), centres[None].expand(q, -1, -1))  # [Q, K, P]
    near = (distance <= radius).to(positive.dtype)
    mass = torch.einsum("qsp,qkp->qsk", positive, near)
    total = positive.sum(dim=-1, keepdim=True)
    shares = mass / total
    invalid = (~visible.to(torch.bool))[:, None, :] | (total <= 0)
    return shares.masked_fill(invalid, math.nan)


def part_profile(shares: Tensor) -> Tensor:
    """[S, K]: the mean share over queries (NaN-aware), each row normalised to sum 1."""
    mean = shares.nanmean(dim=0)
    mean = torch.nan_to_num(mean, nan=0.0)
    total = mean.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, mean / total, torch.full_like(mean, math.nan))


def _entropy(p: Tensor) -> Tensor:
    return -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)


def specialization(profile: Tensor) -> Tensor:
    """[S]: 1 - H(profile_s) / log K (NaN for K = 1 or an empty profile)."""
    k = profile.shape[-1]
    if k < 2:
        return torch.full(profile.shape[:-1], math.nan, dtype=profile.dtype)
    return 1 - _entropy(profile) / math.log(k)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint), over the last dim."""
    mid = (p + q) / 2
    return (_entropy(mid) - (_entropy(p) + _entropy(q)) / 2) / math.log(2)


def profile_diversity(profile: Tensor) -> Tensor:
    """Mean pairwise JSD between the subspaces' profiles [S, K] (NaN when S = 1)."""
    s = profile.shape[0]
    if s < 2:
        return torch.tensor(math.nan, dtype=profile.dtype)
    pairs = js_divergence(profile[:, None], profile[None])  # [S, S]
    return (pairs.sum() - pairs.diagonal().sum()) / (s * (s - 1))


def principal_angles(bases_t: Tensor) -> Tensor:
    """[S, N, N, K] principal angles (degrees) between the class subspaces of every pair,
    from the row bases [S, N, K, d]: arccos of the singular values of U_i^T' U_j."""
    cross = torch.einsum("sikd,sjld->sijkl", bases_t, bases_t)
    cosines = torch.linalg.svdvals(cross).clamp(0, 1)
    return torch.rad2deg(torch.arccos(cosines))


def mean_off_diagonal(matrix: Tensor) -> Tensor:
    """Mean of matrix[..., i, j] over i != j of the last two dims (NaN for a 1 x 1)."""
    n = matrix.shape[-1]
    if n < 2:
        return torch.tensor(math.nan, dtype=matrix.dtype)
    mask = ~torch.eye(n, dtype=torch.bool, device=matrix.device)
    return matrix[..., mask].mean()


@dataclass
class EpisodeMeasure:
    """One episode's measures (floats; NaN where undefined, e.g. diversity for S = 1)."""

    profile: Tensor  # [S, K]
    specialization: float  # mean over subspaces
    diversity: float
    mean_rv: float
    rv: Tensor  # [S, S]
    mean_angle: float  # degrees, over subspaces, class pairs and angles
