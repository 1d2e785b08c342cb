"""Frozen vs fine-tuned protocol: seconds per training episode on the same configuration.

On a synthetic data set (Conv-4 at ``--size`` px, 5-way ``--shot``-shot, ``--query``
queries, the method's head S = 4, d = 64): a short pre-training (``--pretrain-steps``, only so
that a ``backbone.pt`` exists), the one-time embedding of every image (and its mirror) into
the feature table, then ``--episodes`` training episodes of each protocol from the same
start: ``EpisodeTrainer`` (backbone forward + backward per episode, ``train.backbone:
finetune``) and ``FeatureEpisodeTrainer`` (rows of the table, head only, ``frozen``).

``python -m subspace_fsl.bench frozen [--episodes 20] [--size 84] [--shot 1] ...``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from subspace_fsl.bench._common import episode_settings, sync
from subspace_fsl.config import load_config


def _config(work: Path, args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    return load_config(None, [
        f"results_dir={work / 'results'}", f"data_dir={work / 'data'}",
        f"dataset.image_size={args.size}", f"dataset.synthetic.size={args.size}",
        f"dataset.synthetic.classes={args.classes}",
        f"dataset.synthetic.images_per_class={args.images_per_class}",
        "split.counts=[0.5, 0.25, 0.25]", "tracking.enabled=false",
        "train.init=pretrained", f"train.backbone={backbone}", "train.augment=flip",
        f"pretrain.max_steps={args.pretrain_steps}", "pretrain.val_every=1000000",
        "pretrain.val_episodes=2", "pretrain.augment=none", "pretrain.batch_size=16",
        *episode_settings("multisubspace", args.way, args.shot, args.query, args.device,
                          args.threads),
    ])


def _seconds_per_episode(trainer: Any, episodes: int) -> float:
    trainer.step()  # warm-up (allocator, first-call paths)
    sync(trainer.runtime.device)
    start = time.perf_counter()
    for _ in range(episodes):
        trainer.step()
    sync(trainer.runtime.device)
    return (time.perf_counter() - start) / episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subspace_fsl.bench frozen",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--images-per-class", type=int, default=30)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--pretrain-steps", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from subspace_fsl import paths
    from subspace_fsl.data.cache import prepare
    from subspace_fsl.engine.checkpoint import seed_everything
    from subspace_fsl.engine.data import open_data
    from subspace_fsl.engine.features import build_features, feature_data, open_features
    from subspace_fsl.engine.model import build_model
    from subspace_fsl.engine.pretrain import load_pretrained_backbone, pretrain
    from subspace_fsl.engine.train import EpisodeTrainer, FeatureEpisodeTrainer
    from subspace_fsl.runtime import configure

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        finetune, frozen = _config(work, args, "finetune"), _config(work, args, "frozen")
        prepare(finetune)
        pretrain(finetune, paths.pretrain_dir(finetune))
        start = time.perf_counter()
        table = build_features(frozen)
        embed_s = time.perf_counter() - start
        results = {}
        for name, cfg in (("finetune", finetune), ("frozen", frozen)):
            runtime = configure(cfg)
            seed_everything(0)
            model = build_model(cfg)
            load_pretrained_backbone(cfg, model.backbone, paths.pretrained_backbone(cfg))
            if name == "frozen":
                table = open_features(cfg)
                trainer: Any = FeatureEpisodeTrainer(cfg, feature_data(cfg, table), model,
                                                     runtime, table)
            else:
                trainer = EpisodeTrainer(cfg, open_data(cfg), model, runtime)
            results[name] = _seconds_per_episode(trainer, args.episodes)
    n_images = len(table.labels)
    print(f"{args.way}-way {args.shot}-shot {args.query}-query, conv4 at {args.size} px, "
          f"multisubspace S=4 d=64, train.augment=flip, {args.episodes} episodes each, "
          f"device {args.device}")
    print(f"  embedding once : {embed_s:8.2f} s for {n_images} images + mirrors")
    print(f"  finetune       : {1e3 * results['finetune']:8.2f} ms / episode")
    print(f"  frozen (head)  : {1e3 * results['frozen']:8.2f} ms / episode")
    print(f"  ratio          : {results['finetune'] / results['frozen']:8.1f}x faster per "
          f"episode; the embedding pays for itself after "
          f"{embed_s / max(results['finetune'] - results['frozen'], 1e-12):.0f} episodes")
    return 0
