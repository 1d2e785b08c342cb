"""``python -m subspace_fsl.bench cellstep``: one training step of a frozen cell group, two ways.

The group of ``--cells`` method cells (S = ``--subspaces``, d = 64) on ``--dim``-d stored
features (1600: Conv-4 at 84 px) takes one episode's step with the two gradient paths of
:meth:`subspace_fsl.engine.cells.CellGroup.step`, in ONE run on the same random features:

(a) batched: ``MultiSubspaceHead.forward_cells`` (a head with a cell dimension) and one
    backward of ``sum_c L_c``;
(b) ``vmap``-ed ``grad`` of one cell's loss (``engine.cells._cell_loss``).

and the optimiser update of the stacked weights with Adam's fused and ``foreach`` kernels.
Prints episodes per second of each and their ratios.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch.func import grad, stack_module_state, vmap


def _rate(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up: allocator, kernels
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    from subspace_fsl.engine.cells import _cell_loss, _stacked_losses
    from subspace_fsl.heads import MultiSubspaceHead

    parser = argparse.ArgumentParser(prog="python -m subspace_fsl.bench cellstep")
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--subspaces", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1600)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    heads = [MultiSubspaceHead(args.dim, args.subspaces, 64) for _ in range(args.cells)]
    stacked, buffers = stack_module_state(heads)
    params = {k: torch.nn.Parameter(v.detach()) for k, v in stacked.items()}
    template = copy.deepcopy(heads[0]).to("meta")
    lambdas = torch.rand(args.cells, 2)
    support = torch.randn(2 * args.way * args.shot, args.dim)  # mirrored support rows too
    labels = torch.arange(args.way).repeat_interleave(args.shot).repeat(2)
    query = torch.randn(args.way * args.query, args.dim)
    query_labels = torch.arange(args.way).repeat_interleave(args.query)
    inputs = (support, labels, query)

    def batched() -> None:
        out = template.forward_cells({**buffers, **params}, *inputs)
        _stacked_losses(out, lambdas, query_labels)[0].sum().backward()

    def vmapped() -> None:
        def loss(p: dict, b: dict, lam: torch.Tensor) -> tuple:
            return _cell_loss(template, p, b, lam, inputs, query_labels)

        grads, _ = vmap(grad(loss, has_aux=True), randomness="same")(
            {k: v.detach() for k, v in params.items()}, buffers, lambdas)
        for k, p in params.items():
            p.grad = grads[k]

    weights = sum(p.numel() for p in params.values())
    print(f"{args.cells} cells, S={args.subspaces}, d=64, D={args.dim}: {weights / 1e6:.1f}M "
          f"stacked weights; {args.way}-way {args.shot}-shot, {len(support)} support rows "
          f"(mirrored) + {len(query)} queries, {args.threads} threads")
    rates = {"batched forward+backward (forward_cells)": _rate(batched, args.repeats),
             "vmap-ed grad": _rate(vmapped, args.repeats)}
    batched()
    for fused in (True, False):
        optimizer = torch.optim.Adam(params.values(), 1e-3, fused=fused, foreach=not fused)
        rates[f"Adam step ({'fused' if fused else 'foreach'})"] = _rate(optimizer.step,
                                                                        args.repeats)
    for name, rate in rates.items():
        print(f"  {name:45s} {rate:8.2f} /s  ({1e3 / rate:7.1f} ms)")
    names = list(rates)
    print(f"  ratio batched / vmap:   {rates[names[0]] / rates[names[1]]:.2f}x")
    print(f"  ratio fused / foreach:  {rates[names[2]] / rates[names[3]]:.2f}x")
    return 0
