"""``python -m subspace_fsl.bench cells``: grid cells trained together against one process each.

In ONE run, on the same synthetic data, stored features and episodes: ``--cells`` lambda cells
(lambda1 x lambda2) of the method trained (a) together in one process
(:mod:`subspace_fsl.engine.cells`) and (b) one process per cell, one after the other; both
are real subprocesses (``python -m subspace_fsl.bench cells --worker``), so interpreter and
import start-up count. Prints cells per second of each and the ratio (target >= 10x at 20
cells, head-only on stored features, 2 CPU cores).

``--protocol frozen`` (default): the head is trained on a feature table embedded once by a
backbone file written here (random Conv-4 weights: the speed does not depend on them).
``--protocol finetune``: every cell fine-tunes its own copy of that backbone (``make
bench-gpu`` runs it on cuda).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

LAMBDA1 = (0.0, 0.1, 0.3, 1.0, 3.0)
LAMBDA2 = (0.0, 0.01, 0.1, 1.0)


def settings(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The benchmarked configuration (before the cell's lambdas)."""
    return {
        "results_dir": str(root / "results"), "data_dir": str(root / "data"),
        "dataset": {"name": "bench", "image_size": args.image_size,
                    "synthetic": {"classes": 3 * args.way, "images_per_class": 20,
                                  "size": args.image_size}},
        "split": {"counts": [args.way, args.way, args.way]},
        "model": {"backbone": "conv4", "head": "multisubspace", "n_subspaces": 4,
                  "subspace_dim": 16},
        "train": {"way": args.way, "shot": args.shot, "query": 5,
                  "max_episodes": args.episodes, "val_every": args.episodes,
                  "val_episodes": 10, "log_every": 50, "checkpoint_every": args.episodes,
                  "patience": 100, "init": "pretrained", "backbone": args.protocol,
                  "augment": "none"},
        "eval": {"query": 5, "batch_size": 64},
        "runtime": {"threads": args.threads, "progress": "none", "device": args.device},
        "tracking": {"enabled": False},
    }


def cell_settings(cfg: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The first ``n`` (lambda1, lambda2) cells (cycled past 20 with growing lambda1)."""
    out = []
    for i in range(n):
        c = copy.deepcopy(cfg)
        c["train"]["lambda1"] = LAMBDA1[i % len(LAMBDA1)] * (1 + i // 20)
        c["train"]["lambda2"] = LAMBDA2[(i // len(LAMBDA1)) % len(LAMBDA2)]
        out.append(c)
    return out


def write_backbone(cfg: dict[str, Any]) -> Path:
    """A backbone file in the pretrain stage's format (random weights, seeded)."""
    import torch

    from subspace_fsl import paths
    from subspace_fsl.backbones import build_backbone
    from subspace_fsl.engine.checkpoint import save_checkpoint
    from subspace_fsl.engine.pretrain import pretrain_settings

    torch.manual_seed(0)
    backbone = build_backbone(cfg["model"]["backbone"], weights=None)
    target = paths.pretrained_backbone(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"config": pretrain_settings(cfg), "backbone": backbone.state_dict(),
                     "step": 0, "val_acc": 0.0,
                     "feature_dim": int(backbone.output_dim(cfg["dataset"]["image_size"]))},
                    target)
    return target


def prepare_inputs(cfg: dict[str, Any]) -> None:
    """Cache, split, backbone file and (frozen) the feature table, shared by both timings."""
    from subspace_fsl.config import validate
    from subspace_fsl.data.cache import prepare
    from subspace_fsl.engine.data import open_data

    full = validate(cfg)
    prepare(full, progress=False)
    open_data(full)  # writes the split file
    write_backbone(full)
    if full["train"]["backbone"] == "frozen":
        from subspace_fsl.engine.features import build_features

        build_features(full)


def worker(config: Path, out: Path, cells: list[int]) -> None:
    """Train the given cells of the benchmark (together) into ``out/cell-<i>``."""
    from subspace_fsl.config import load_config
    from subspace_fsl.engine.cells import train_cells

    everything = cell_settings(load_config(config), max(cells) + 1)
    train_cells([everything[i] for i in cells], [out / f"cell-{i}" for i in cells])


def _spawn(config: Path, out: Path, cells: list[int]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "subspace_fsl.bench", "cells", "--worker",
                    str(config), str(out), ",".join(map(str, cells))], check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subspace_fsl.bench cells",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--protocol", choices=("frozen", "finetune"), default="frozen")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=Path, default=None,
                        help="working folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "OUT", "CELLS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        config, out, cells = args.worker
        worker(Path(config), Path(out), [int(c) for c in cells.split(",")])
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch)
        cfg = settings(root, args)
        config = root / "bench-cells.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(cfg))
        prepare_inputs(cfg)
        cells = list(range(args.cells))
        together = _spawn(config, root / "together", cells)
        alone = sum(_spawn(config, root / "alone", [i]) for i in cells)
    result = {"protocol": args.protocol, "device": args.device, "cells": args.cells,
              "episodes": args.episodes, "threads": args.threads,
              "together_s": together, "alone_s": alone,
              "together_cells_per_s": args.cells / together,
              "alone_cells_per_s": args.cells / alone, "ratio": alone / together}
    print(f"{args.cells} cells x {args.episodes} episodes, {args.protocol}, {args.device}, "
          f"{args.threads} threads")
    print(f"trained together (1 process):  {result['together_cells_per_s']:.3f} cells/s "
          f"({together:.1f} s)")
    print(f"one process per cell:          {result['alone_cells_per_s']:.3f} cells/s "
          f"({alone:.1f} s)")
    print(f"ratio: {result['ratio']:.1f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
