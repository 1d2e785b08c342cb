"""The head contract: ``head(support [N*K, D], labels [N*K], query [Q, D]) -> HeadOutput``.

Every head turns a distance D(q, c) into logits = -D(q, c) / tau; tau is a fixed buffer or,
with ``learn_tau``, a learned parameter kept positive as exp(log_tau). Heads with a
``distance`` setting (protonet, dsn) score either the squared residual ||r||^2 (``squared``,
Snell et al.) or its root ||r|| (``euclidean``: easyfsl's ``torch.cdist``, DSN's official
code), see :data:`DISTANCE_FORMS`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from subspace_fsl.registry import Registry

HEADS: Registry[FewShotHead] = Registry("head")


def _euclidean(squared: Tensor) -> Tensor:
    # the floor keeps the root's gradient finite where a residual is exactly 0 (a query
    # equal to its prototype); below it the clamp passes no gradient, as ||r|| has none there
    return squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt()


#: distance form -> the map from squared residuals ||r||^2 to the scored distance
DISTANCE_FORMS = {"squared": lambda squared: squared, "euclidean": _euclidean}


def distance_form(name: str) -> str:
    if name not in DISTANCE_FORMS:
        raise ValueError(f"distance must be one of {sorted(DISTANCE_FORMS)}, got {name!r}")
    return name


@dataclass
class HeadOutput:
    """What a head returns for one episode (l1 and l2 are 0-d; 0 where a head has no term)."""

    logits: Tensor  # [Q, N] = -distances / tau
    distances: Tensor  # [Q, N] = per_subspace summed over subspaces
    per_subspace: Tensor  # [S, Q, N]
    l1: Tensor  # feature-subspace diversity
    l2: Tensor  # class-subspace discrimination


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Switch autocast off so the Gram matrices and solves run in the dtype we cast to."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def group_by_class(labels: Tensor, n_items: int) -> tuple[Tensor, int, int]:
    """Check episode labels and return (order, N, K) such that ``x[order].view(N, K, ...)``
    groups the support set by class. Labels must be integers covering 0..N-1, K per class."""
    if labels.dim() != 1 or labels.numel() != n_items:
        raise ValueError(
            f"support_labels must be 1-D with one label per support feature ({n_items}); "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"support_labels must be an integer tensor, got {labels.dtype}")
    if n_items == 0:
        raise ValueError("the support set is empty")
    low, high = torch.stack([labels.min(), labels.max()]).tolist()  # one host sync
    if low < 0:
        raise ValueError(f"support_labels must lie in 0..N-1; got label {low}")
    counts = torch.bincount(labels, minlength=high + 1).tolist()
    if min(counts) == 0:
        missing = [c for c, n in enumerate(counts) if n == 0]
        raise ValueError(
            f"support_labels must cover 0..N-1 without gaps; labels {missing} are missing "
            f"(max label {high})"
        )
    if len(set(counts)) != 1:
        raise ValueError(
            f"every class needs the same number of shots; got counts per class {counts}"
        )
    order = torch.argsort(labels, stable=True)
    return order, high + 1, counts[0]


class FewShotHead(nn.Module):
    """Base class: temperature handling, input checks and the shared call shape."""

    def __init__(self, tau: float, learn_tau: bool) -> None:
        super().__init__()
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive finite number, got {tau!r}")
        log_tau = torch.tensor(math.log(float(tau)))
        if learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    @property
    def tau(self) -> Tensor:
        return self.log_tau.exp()

    def validate_episode(self, way: int, shot: int) -> None:
        """Raise ``ValueError`` for an episode shape this head cannot use."""
        for name, value, minimum in (("way", way, 2), ("shot", shot, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    @staticmethod
    def check_shapes(support: Tensor, query: Tensor) -> None:
        if support.dim() != 2 or query.dim() != 2 or support.shape[1] != query.shape[1]:
            raise ValueError(
                "expected support_features [N*K, D] and query_features [Q, D] with the same D; "
                f"got {tuple(support.shape)} and {tuple(query.shape)}"
            )

    def check_inputs(
        self, support: Tensor, labels: Tensor, query: Tensor
    ) -> tuple[Tensor, int, int]:
        """Shapes and labels; returns ``group_by_class``'s (order, N, K)."""
        self.check_shapes(support, query)
        return group_by_class(labels, support.shape[0])

    def output(self, per_subspace: Tensor, l1: Tensor, l2: Tensor) -> HeadOutput:
        distances = per_subspace.sum(dim=0)
        logits = -distances / self.tau.to(distances.dtype)
        return HeadOutput(logits, distances, per_subspace, l1, l2)


def warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)
