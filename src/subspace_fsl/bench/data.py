"""Data benchmarks (printed figures, not timed tests).

``python -m subspace_fsl.bench data``: assembling a 5-way 5-shot 16-query episode at 84 px
from the image cache against decoding the episode's image files each time; prints the ratio
and the in-memory size of the CUB cache at 84 px.

``python -m subspace_fsl.bench data --difficulty``: how hard the synthetic data set is. Trains
ProtoNet with a Conv-4 (Adam 1e-3) on 5-way 5-shot episodes of half the synthetic classes,
then reports 5-way 5-shot accuracy on the other half (95% confidence interval).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from subspace_fsl.backbones import build_backbone
from subspace_fsl.data.cache import ImageCache, build_cache, source_stamp
from subspace_fsl.data.cub import read_cub
from subspace_fsl.data.episodes import IMAGENET_MEAN, IMAGENET_STD, EpisodeLoader, EpisodeSampler
from subspace_fsl.data.images import load_image
from subspace_fsl.data.synth import generate

CUB_IMAGES = 11_788


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m subspace_fsl.bench data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", help="a data set in CUB's layout (default: synthesise one)")
    parser.add_argument("--synth-classes", type=int, default=20)
    parser.add_argument("--synth-images", type=int, default=30, help="images per class")
    parser.add_argument(
        "--synth-size",
        type=int,
        default=None,
        help="side of the synthesised JPEGs (default 400 for the speed benchmark: CUB's photos "
        "are about 500x375; 84 for --difficulty: the synthetic data set's default)",
    )
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--difficulty",
        action="store_true",
        help="train/evaluate ProtoNet + Conv-4 on the synthetic data instead",
    )
    parser.add_argument("--train-episodes", type=int, default=300)
    parser.add_argument("--eval-episodes", type=int, default=200)
    return parser


def _dataset(args: argparse.Namespace, workdir: Path, size: int) -> Path:
    if args.root:
        return Path(args.root)
    started = time.perf_counter()
    root = generate(
        workdir / "synthetic",
        args.synth_classes,
        args.synth_images,
        size,
        args.seed,
        progress=False,
    )
    print(
        f"synthesised {args.synth_classes} classes x {args.synth_images} images at {size} px "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return root


def bench_episodes(args: argparse.Namespace, workdir: Path) -> None:
    root = _dataset(args, workdir, args.synth_size or 400)
    records = read_cub(root)
    started = time.perf_counter()
    cache_dir = build_cache(
        records,
        workdir / "cache",
        args.image_size,
        root=root,
        source_stamp=source_stamp(records, root),
        workers=2,
        progress=False,
    )
    print(f"built the cache of {len(records)} images in {time.perf_counter() - started:.1f} s")
    cache = ImageCache.open(cache_dir)
    sampler = EpisodeSampler(
        cache.labels, np.unique(cache.labels), args.way, args.shot, args.query, args.seed
    )
    episodes = [sampler.sample() for _ in range(args.episodes)]
    loader = EpisodeLoader(cache, "cpu")
    augmenting = EpisodeLoader(cache, "cpu", augment="standard")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    paths = records["path"].tolist()

    def from_files(episode: object) -> torch.Tensor:
        indices = np.concatenate([episode.support_idx, episode.query_idx])  # type: ignore[attr-defined]
        arrays = np.stack([load_image(paths[i], args.image_size) for i in indices])
        return (torch.from_numpy(arrays).float().div_(255) - mean) / std

    def timed(function: object) -> float:
        function(episodes[0])  # type: ignore[operator]  # warm-up
        started = time.perf_counter()
        for episode in episodes:
            function(episode)  # type: ignore[operator]
        return (time.perf_counter() - started) / len(episodes)

    torch.set_num_threads(1)
    cached, augmented, decoded = timed(loader), timed(augmenting), timed(from_files)
    n = args.way * (args.shot + args.query)
    print(
        f"episode {args.way}-way {args.shot}-shot {args.query}-query = {n} images at "
        f"{args.image_size} px, mean of {len(episodes)} episodes, 1 CPU thread:"
    )
    print(f"  decode JPEGs each time : {decoded * 1e3:8.2f} ms")
    print(f"  from the cache         : {cached * 1e3:8.2f} ms")
    print(f"  from the cache + augment: {augmented * 1e3:7.2f} ms (batched, per-image draws)")
    print(f"  cache speed-up: {decoded / cached:.1f}x")
    size = CUB_IMAGES * 3 * args.image_size * args.image_size
    print(
        f"CUB cache at {args.image_size} px: {CUB_IMAGES} x 3 x {args.image_size} x "
        f"{args.image_size} bytes = {size:,} bytes = {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB)"
    )


def protonet_logits(
    model: nn.Module, support: torch.Tensor, query: torch.Tensor, way: int, shot: int
) -> torch.Tensor:
    features = model(torch.cat([support, query]))
    prototypes = features[: way * shot].view(way, shot, -1).mean(1)
    return -torch.cdist(features[way * shot :], prototypes).pow(2)


def bench_difficulty(args: argparse.Namespace, workdir: Path) -> None:
    root = _dataset(args, workdir, args.synth_size or 84)
    records = read_cub(root)
    cache = ImageCache.open(
        build_cache(
            records, workdir / "cache", args.image_size, root=root, workers=2, progress=False
        )
    )
    classes = np.unique(cache.labels)
    base, novel = classes[: len(classes) // 2], classes[len(classes) // 2 :]
    torch.manual_seed(args.seed)
    model = build_backbone("conv4")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = EpisodeLoader(cache, "cpu", augment="none")
    train = EpisodeSampler(cache.labels, base, args.way, args.shot, args.query, args.seed)
    started = time.perf_counter()
    model.train()
    for step in range(args.train_episodes):
        episode = train.sample()
        support, query = loader(episode)
        loss = nn.functional.cross_entropy(
            protonet_logits(model, support, query, args.way, args.shot),
            torch.from_numpy(episode.query_labels),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"  episode {step + 1}: loss {loss.item():.3f}", flush=True)
    model.eval()
    evaluate = EpisodeSampler(cache.labels, novel, args.way, args.shot, 15, args.seed + 1)
    accuracies = []
    with torch.no_grad():
        for _ in range(args.eval_episodes):
            episode = evaluate.sample()
            support, query = loader(episode)
            predicted = protonet_logits(model, support, query, args.way, args.shot).argmax(1)
            accuracies.append((predicted.numpy() == episode.query_labels).mean())
    mean = 100 * float(np.mean(accuracies))
    half_width = 100 * 1.96 * float(np.std(accuracies)) / np.sqrt(len(accuracies))
    print(
        f"ProtoNet Conv-4, {args.train_episodes} training episodes on {len(base)} base classes "
        f"({time.perf_counter() - started:.0f} s): {args.way}-way {args.shot}-shot accuracy on "
        f"{len(novel)} held-out classes = {mean:.1f} +- {half_width:.1f} % "
        f"(chance {100 / args.way:.0f} %)"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="subspace-fsl-bench-") as tmp:
        if args.difficulty:
            bench_difficulty(args, Path(tmp))
        else:
            bench_episodes(args, Path(tmp))
    return 0
