"""Engine benchmark: cached-feature evaluation and training throughput (figures printed).

(a) A 600-episode evaluation on a synthetic novel split with Conv-4 at 84 px, once on
    features embedded once (the engine's path) and once re-embedding every episode's images;
    the re-embedding is timed on ``--reembed-episodes`` episodes and extrapolated to all of
    them (said in the output). Both paths' accuracies on those episodes are compared.
(b) Training episodes per second of the multi-subspace head (S=4, d=64) against ProtoNet on
    the same backbone, episodes and seeds.

``python -m subspace_fsl.bench engine [--episodes 600] [--train-episodes 20] ...``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subspace_fsl.bench._common import episode_settings, sync
from subspace_fsl.config import load_config


def _config(
    work: Path, args: argparse.Namespace, head: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """The benchmark's synthetic configuration; ``extra`` are further ``--set`` overrides."""
    return load_config(
        None,
        [
            f"results_dir={work / 'results'}",
            f"data_dir={work / 'data'}",
            f"dataset.image_size={args.size}",
            f"dataset.synthetic.size={args.size}",
            f"dataset.synthetic.classes={args.classes}",
            f"dataset.synthetic.images_per_class={args.images_per_class}",
            f"split.counts={[0.5, 0.25, 0.25]}",
            f"eval.query={args.query}",
            f"eval.episodes={args.episodes}",
            *episode_settings(head, args.way, args.shot, args.query, args.device, args.threads),
            *extra,
        ],
    )


def bench_evaluation(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Seconds for all episodes on cached features vs. re-embedding (extrapolated)."""
    from subspace_fsl.data.episodes import EpisodeLoader
    from subspace_fsl.engine.data import open_data
    from subspace_fsl.engine.evaluate import episode_accuracies, evaluation_plan
    from subspace_fsl.engine.model import build_model
    from subspace_fsl.runtime import configure, no_grad_eval, place_model, to_input

    runtime = configure(cfg)
    torch.manual_seed(0)
    model = place_model(build_model(cfg), runtime)
    data = open_data(cfg)
    plan = evaluation_plan(cfg, data, "novel")
    n_images = len(
        np.unique(np.concatenate([np.concatenate([e.support_idx, e.query_idx]) for e in plan]))
    )
    episode_accuracies(model, data, plan[:2], cfg["eval"]["batch_size"], runtime)  # warm-up

    sync(runtime.device)
    start = time.perf_counter()
    cached = episode_accuracies(model, data, plan, cfg["eval"]["batch_size"], runtime)
    sync(runtime.device)
    cached_s = time.perf_counter() - start

    subset = plan[: args.reembed_episodes]
    loader = EpisodeLoader(
        data.cache, runtime.device, augment="none", channels_last=runtime.channels_last
    )
    reembedded = np.empty(len(subset))
    sync(runtime.device)
    start = time.perf_counter()
    with no_grad_eval(model):
        for i, episode in enumerate(subset):
            support, query = loader(episode)
            support_labels, query_labels = loader.labels(episode)
            with runtime.autocast():
                features = model.backbone(to_input(torch.cat([support, query]), runtime)).float()
            logits = model.head(
                features[: len(support)], support_labels, features[len(support) :]
            ).logits
            reembedded[i] = (logits.argmax(1) == query_labels).float().mean().item()
    sync(runtime.device)
    subset_s = time.perf_counter() - start
    return {
        "episodes": len(plan),
        "images": n_images,
        "cached_s": cached_s,
        "reembed_subset": len(subset),
        "reembed_subset_s": subset_s,
        "reembed_s": subset_s * len(plan) / len(subset),
        "max_acc_diff": float(np.max(np.abs(cached[: len(subset)] - reembedded))),
        "device": str(runtime.device),
        "threads": runtime.threads,
    }


def training_stepper(cfg: dict[str, Any], data: Any = None) -> Callable[[], None]:
    """A function running one training episode (sampling, loading, augmenting, step).

    ``data`` is an ``EngineData`` (default: the configuration's own, opened here)."""
    from subspace_fsl.engine.data import open_data
    from subspace_fsl.engine.model import build_model
    from subspace_fsl.engine.train import EpisodeTrainer
    from subspace_fsl.runtime import configure

    runtime = configure(cfg)
    torch.manual_seed(0)
    data = open_data(cfg) if data is None else data
    trainer = EpisodeTrainer(cfg, data, build_model(cfg), runtime)

    def step() -> None:
        trainer.step()
        sync(runtime.device)

    return step


def bench_training(
    steppers: dict[str, Callable[[], None]], episodes: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) episodes per second of each stepper, their episodes interleaved
    (A, B, A, B, ...) so that a change in machine load hits all of them alike."""
    wall = dict.fromkeys(steppers, 0.0)
    cpu = dict.fromkeys(steppers, 0.0)
    for i in range(warmup + episodes):
        for name, step in steppers.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            step()
            if i >= warmup:
                wall[name] += time.perf_counter() - start_wall
                cpu[name] += time.process_time() - start_cpu
    return {name: (episodes / wall[name], episodes / cpu[name]) for name in steppers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m subspace_fsl.bench engine", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--images-per-class", type=int, default=30)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600, help="evaluation episodes")
    parser.add_argument(
        "--reembed-episodes",
        type=int,
        default=30,
        help="episodes timed when re-embedding (extrapolated to --episodes)",
    )
    parser.add_argument("--train-episodes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        work = args.work or Path(tmp)
        method = _config(work, args, "multisubspace")
        ev = bench_evaluation(method, args)
        print(
            f"(a) evaluation, Conv-4 at {args.size} px, {ev['episodes']} episodes "
            f"{args.way}-way {args.shot}-shot {args.query} queries, {ev['images']} distinct "
            f"images, {ev['device']}, {ev['threads']} threads"
        )
        print(f"    cached features (embed once + head per episode): {ev['cached_s']:8.2f} s")
        print(
            f"    re-embed every episode: {ev['reembed_subset_s']:.2f} s for "
            f"{ev['reembed_subset']} episodes, extrapolated to {ev['episodes']}: "
            f"{ev['reembed_s']:8.2f} s"
        )
        print(
            f"    speed-up: {ev['reembed_s'] / ev['cached_s']:.1f}x (target >= 10x); "
            f"largest accuracy difference on the timed episodes: {ev['max_acc_diff']:.2g}"
        )

        rates = bench_training(
            {
                "multisubspace S=4 d=64": training_stepper(_config(work, args, "multisubspace")),
                "protonet": training_stepper(_config(work, args, "protonet")),
            },
            args.train_episodes,
            args.warmup,
        )
        print(
            f"(b) training throughput, Conv-4 at {args.size} px, {args.way}-way {args.shot}-shot "
            f"{args.query} queries, augmentation on, {args.train_episodes} episodes each after "
            f"{args.warmup} warm-up, interleaved"
        )
        for name, (wall, cpu) in rates.items():
            print(f"    {name:<24} {wall:6.2f} episodes/s wall, {cpu:6.2f} per CPU-second")
        method, baseline = rates["multisubspace S=4 d=64"], rates["protonet"]
        print(
            f"    ratio multisubspace / protonet: {method[0] / baseline[0]:.2f} wall, "
            f"{method[1] / baseline[1]:.2f} CPU (target >= 0.9)"
        )
    return 0
