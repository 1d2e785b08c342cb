"""ProtoNet on the raw features: D(q, c) = || q - mean_k x_{c,k} ||^2 (``distance: squared``,
Snell et al. 2017) or || q - mean_k x_{c,k} || (``distance: euclidean``, easyfsl's
``PrototypicalNetworks``: ``logits = -torch.cdist(q, prototypes)``)."""

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


@HEADS.register("protonet")
class ProtoNetHead(FewShotHead):
    """(Squared) Euclidean distance to the class mean; no L1 / L2 terms (both 0)."""

    def __init__(
        self, in_dim: int, tau: float = 1.0, learn_tau: bool = False, distance: str = "squared"
    ) -> None:
        super().__init__(tau, learn_tau)
        self.in_dim = in_dim
        self.distance = distance_form(distance)

    def forward(
        self, support_features: Tensor, support_labels: Tensor, query_features: Tensor
    ) -> HeadOutput:
        order, n_way, shot = self.check_inputs(support_features, support_labels, query_features)
        dtype = compute_dtype(support_features)
        with full_precision(support_features.device):
            support = support_features.to(dtype)[order].reshape(n_way, shot, -1)
            query = query_features.to(dtype)
            prototypes = support.mean(dim=1)  # [N, D]
            # Explicit differences: the expanded ||q||^2 - 2 q.mu + ||mu||^2 cancels badly.
            squared = (query[:, None, :] - prototypes[None]).square().sum(-1)
            distances = DISTANCE_FORMS[self.distance](squared)
            zero = distances.new_zeros(())
        return self.output(distances[None], zero, zero)
