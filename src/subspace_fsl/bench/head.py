"""``python -m subspace_fsl.bench head``: is the batched multi-subspace head fast enough?

Measures in one run, forward + backward of CE + L1 + L2 (median over repeats):
(a) the batched head after its projection (``from_projections``: class subspaces,
    distances, L1, L2) against a plain per-class SVD loop computing the same quantities
    from the same projections (target: >= 5x faster; the shared Linear is left out);
(b) the head's share (its Linear projection included) of a whole episode with Conv-4 at
    84 x 84, 5-way 5-shot, 15 queries, S = 4, d = 64 (target: < 10%).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from subspace_fsl.backbones import build_backbone
from subspace_fsl.bench._common import sync
from subspace_fsl.heads import MultiSubspaceHead


def loop_reference(
    head: MultiSubspaceHead, z_support: Tensor, labels: Tensor, z_query: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """logits, L1, L2 from projections [S, n, d] with one thin SVD per (subspace, class):
    the literal method.md form."""
    n_way, n_sub = int(labels.max()) + 1, head.n_subspaces
    distances = []
    bases = []
    for s in range(n_sub):
        bases_s = []
        columns = []
        for c in range(n_way):
            u, sv, _ = torch.linalg.svd(z_support[s][labels == c].T, full_matrices=False)
            rank = int((sv > sv.max() * max(u.shape) * torch.finfo(sv.dtype).eps).sum())
            u = u[:, :rank]
            bases_s.append(u)
            residual = z_query[s] - (z_query[s] @ u) @ u.T
            columns.append(residual.square().sum(-1))
        bases.append(bases_s)
        distances.append(torch.stack(columns, dim=1))
    l2 = sum(
        (bases[s][i].T @ bases[s][j]).square().sum()
        for s in range(n_sub)
        for i in range(n_way)
        for j in range(n_way)
        if i != j
    )
    l1 = z_support.new_zeros(())
    for i in range(n_sub):
        for j in range(n_sub):
            if i != j:
                zi, zj = z_support[i], z_support[j]
                rho = (zi @ zj.T).square().sum() / (
                    torch.linalg.norm(zi @ zi.T) * torch.linalg.norm(zj @ zj.T)
                )
                l1 = l1 + rho
    logits = -torch.stack(distances).sum(0) / head.tau
    return logits, l1 / (n_sub * (n_sub - 1)), l2 / (n_sub * n_way * (n_way - 1))


def median_seconds(
    steps: Sequence[Callable[[], None]], repeats: int, device: torch.device, blocks: int = 5
) -> list[float]:
    """Median wall time of each step. The steps take turns in blocks of repeats / blocks
    calls, so they all see the same machine load without running right after each other
    (a LAPACK call's spinning worker threads would slow the next step down)."""

    per_block = max(1, repeats // blocks)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(blocks):
        for step, record in zip(steps, times, strict=True):
            for call in range(per_block + 2):  # 2 warm-up calls (allocator, kernels, threads)
                sync(device)
                start = time.perf_counter()
                step()
                sync(device)
                if call >= 2:
                    record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m subspace_fsl.bench head",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--repeats", type=int, default=10, help="timed whole episodes")
    parser.add_argument("--head-repeats", type=int, default=200, help="timed head-only steps")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=15, help="queries per class")
    parser.add_argument("--subspaces", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="subspace dimension d")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(0)
    backbone = build_backbone("conv4").to(device)
    in_dim = backbone.output_dim(args.image_size)
    head = MultiSubspaceHead(in_dim, args.subspaces, args.dim).to(device)
    head.validate_episode(args.way, args.shot)
    labels = torch.arange(args.way, device=device).repeat_interleave(args.shot)
    query_labels = torch.arange(args.way, device=device).repeat_interleave(args.query)
    n_support, n_query = args.way * args.shot, args.way * args.query
    features = torch.randn(n_support + n_query, in_dim, device=device)
    images = torch.randn(n_support + n_query, 3, args.image_size, args.image_size, device=device)

    with torch.no_grad():
        projections = head.project(features)

    def batched_head(feats: Tensor) -> Tensor:
        out = head(feats[:n_support], labels, feats[n_support:])
        return F.cross_entropy(out.logits, query_labels) + out.l1 + out.l2

    def batched_subspaces(z: Tensor) -> Tensor:
        out = head.from_projections(z[:, :n_support], labels, z[:, n_support:])
        return F.cross_entropy(out.logits, query_labels) + out.l1 + out.l2

    def looped_subspaces(z: Tensor) -> Tensor:
        logits, l1, l2 = loop_reference(head, z[:, :n_support], labels, z[:, n_support:])
        return F.cross_entropy(logits, query_labels) + l1 + l2

    def step_on(loss_of: Callable[[Tensor], Tensor], inputs: Tensor) -> Callable[[], None]:
        def step() -> None:
            head.zero_grad(set_to_none=True)
            loss_of(inputs.detach().requires_grad_()).backward()

        return step

    def episode_step() -> None:
        backbone.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        batched_head(backbone(images)).backward()

    with torch.no_grad():  # the two forms compute the same loss
        same = torch.allclose(
            batched_subspaces(projections), looped_subspaces(projections), rtol=1e-4, atol=1e-4
        )
    batched, looped = median_seconds(
        [step_on(batched_subspaces, projections), step_on(looped_subspaces, projections)],
        args.head_repeats,
        device,
    )
    whole_head, episode = median_seconds(
        [step_on(batched_head, features), episode_step], args.repeats, device, blocks=2
    )
    speedup, share = looped / batched, whole_head / episode
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, {args.way}-way "
        f"{args.shot}-shot, {args.query} queries/class, S={args.subspaces}, d={args.dim}, "
        f"Conv-4 at {args.image_size}px (D={in_dim}); forward+backward, median of "
        f"{args.head_repeats} (a) / {args.repeats} (b) repeats taken in alternating blocks"
    )
    print(f"losses agree (batched vs per-class SVD loop): {same}")
    print(
        f"(a) batched head {batched * 1e3:8.2f} ms | per-class SVD loop {looped * 1e3:8.2f} ms"
        f" | speed-up {speedup:6.1f}x (target >= 5x: {'met' if speedup >= 5 else 'NOT met'})"
    )
    print(
        f"(b) head with its Linear {whole_head * 1e3:8.2f} ms | whole episode "
        f"{episode * 1e3:8.2f} ms | head share {100 * share:5.1f}%"
        f" (target < 10%: {'met' if share < 0.10 else 'NOT met'})"
    )
    return 0 if same else 1
