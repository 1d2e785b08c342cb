"""``subspace-fsl pretrain | train | evaluate | predict``: the engine's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from subspace_fsl.cli.common import SubParsers, command, config_from_args
from subspace_fsl.config import ConfigError, atomic_write_text, load_config, save_config
from subspace_fsl.logs import setup_logging


def run_pretrain(args: argparse.Namespace) -> int:
    from subspace_fsl.engine.pretrain import pretrain
    from subspace_fsl.paths import pretrain_dir

    setup_logging()
    cfg = config_from_args(args)
    out = args.out or pretrain_dir(cfg)
    summary = pretrain(cfg, out, split_file=args.split_file, cache_dir=args.cache)
    print(json.dumps(summary, indent=2))
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from subspace_fsl.engine.features import build_features

    setup_logging()
    cfg = config_from_args(args)
    table = build_features(cfg, args.out, cache_dir=args.cache, split_file=args.split_file,
                           backbone_file=args.backbone)
    print(json.dumps({"features": str(table.path), "images": len(table.features),
                      "dim": table.dim, "flipped": table.flipped is not None,
                      "stamp": table.stamp}, indent=2))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from subspace_fsl import tracking
    from subspace_fsl.engine.train import train

    setup_logging()
    cfg = config_from_args(args)
    tracking.check_store(cfg)  # before any work: an unreachable server fails in seconds
    summary = train(cfg, args.out, split_file=args.split_file, cache_dir=args.cache,
                    features_file=args.features)
    print(json.dumps(summary, indent=2))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from subspace_fsl import tracking
    from subspace_fsl.engine.evaluate import evaluate

    setup_logging()
    run = Path(args.run)
    config_path = args.config or run / "config.yaml"
    if args.config is None and not Path(config_path).is_file():
        raise ConfigError(f"--run {run} has no config.yaml; pass --config")
    cfg = load_config(config_path, args.overrides)
    tracking.check_store(cfg)  # evaluate logs at the end: check the store first
    checkpoint = Path(args.checkpoint) if args.checkpoint else run / "best.pt"
    if args.target is not None:  # a cross-domain target of eval.targets
        from subspace_fsl import targets
        from subspace_fsl.engine.target import evaluate_target

        targets.settings(cfg, args.target)
        out = Path(args.out) if args.out else run / "eval" / targets.split_name(args.target)
        summary = evaluate_target(cfg, checkpoint, args.target, out, cache_dir=args.cache)
        print(json.dumps(summary, indent=2))
        return 0
    train_shot = None if args.shot is None else cfg["train"]["shot"]
    shot = None if args.shot == train_shot else args.shot
    out = Path(args.out) if args.out else run / "eval" / (
        args.split if shot is None else f"{args.split}_shot{shot}")
    summary = evaluate(
        cfg, checkpoint, args.split, out, split_file=args.split_file, cache_dir=args.cache,
        shot=shot, features_file=args.features,
    )
    print(json.dumps(summary, indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from subspace_fsl.engine.predict import format_predictions, predict, resolve_checkpoint

    setup_logging()
    cfg = config_from_args(args)
    checkpoint = resolve_checkpoint(args.checkpoint, args.model, cfg)
    table = predict(checkpoint, args.support, args.images, cfg, args.explain)
    out = Path(args.out)
    atomic_write_text(out, table.to_csv(index=False))
    save_config(cfg, out.with_name(f"{out.stem}.config.yaml"))
    print(format_predictions(table))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split-file", metavar="JSON",
                        help="class split file (default {results_dir}/splits/{dataset}.json; "
                             "made from the split settings when missing)")
    parser.add_argument("--cache", metavar="DIR",
                        help="image cache directory (default: built from the dataset settings)")


def _features_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", metavar="PT",
                        help="train.backbone=frozen: the feature file (default "
                             "{results_dir}/features/{dataset}/{backbone}.pt, made by embed)")


def register(sub: SubParsers) -> None:
    parser = command(
        sub, "pretrain", run_pretrain,
        "pre-train the backbone on the base classes (once per data set and backbone; for "
        "train.init=pretrained)",
        "Batch classification of the base classes with early stopping on validation episodes "
        "(ProtoNet on the features); resumes; writes config.yaml, checkpoint.pt, backbone.pt, "
        "history.csv, pretrain_summary.json and done into --out.")
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="default {results_dir}/pretrain/{dataset}/{backbone}")
    _data_arguments(parser)

    parser = command(
        sub, "embed", run_embed,
        "embed every cached image once with the pre-trained backbone (train.backbone=frozen)",
        "Run the pretrain stage's backbone (eval mode) over every image of the cache, and "
        "over their mirror images when a run flips; write one feature file with its "
        "provenance (backbone sha256, cache stamp, preprocessing); a current file is kept.")
    parser.add_argument("--out", "-o", metavar="PT",
                        help="default {results_dir}/features/{dataset}/{backbone}.pt")
    parser.add_argument("--backbone", metavar="PT",
                        help="default {results_dir}/pretrain/{dataset}/{backbone}/backbone.pt")
    _data_arguments(parser)

    parser = command(
        sub, "train", run_train,
        "episodic meta-training of one configuration (resumes; no-op when done)",
        "Meta-train a backbone and head on base-class episodes, validating on fixed "
        "validation-class episodes; writes config.yaml, checkpoint.pt, best.pt, history.csv, "
        "train_summary.json and done into --out.")
    parser.add_argument("--out", "-o", required=True, metavar="RUN_DIR",
                        help="run directory (created; a killed run resumes from it)")
    _data_arguments(parser)
    _features_argument(parser)

    parser = command(
        sub, "evaluate", run_evaluate,
        "evaluate a trained run on fixed novel (or validation) episodes",
        "Embed every image of the split once, run eval.episodes episodes on the cached "
        "features and write episodes.csv and summary.json.")
    parser.add_argument("--run", required=True, metavar="RUN_DIR",
                        help="a train --out directory (its config.yaml is the default --config)")
    parser.add_argument("--split", choices=("novel", "val"), default="novel",
                        help="classes to evaluate on (val: for choosing lambdas); default novel")
    parser.add_argument("--checkpoint", metavar="PT", help="default RUN_DIR/best.pt")
    parser.add_argument("--target", metavar="NAME",
                        help="a cross-domain target of eval.targets instead of --split (its "
                             "own episodes; --cache: its image cache, default built from its "
                             "dataset section; default --out RUN_DIR/eval/target-NAME)")
    parser.add_argument("--shot", type=int, metavar="K",
                        help="support images per class (default: the training shot)")
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="default RUN_DIR/eval/SPLIT (RUN_DIR/eval/SPLIT_shotK at another "
                             "shot K)")
    _data_arguments(parser)
    _features_argument(parser)

    parser = command(
        sub, "predict", run_predict,
        "classify images against a support folder with a trained checkpoint",
        "Print and write (CSV) each image's predicted class, its distance to every support "
        "class and each feature subspace's share of that distance.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="PT", help="e.g. RUN_DIR/best.pt")
    which.add_argument("--model", metavar="URI", help="an MLflow model, e.g. runs:/<run id>/model")
    parser.add_argument("--support", required=True, metavar="DIR",
                        help="folder with one subfolder of labelled images per class")
    parser.add_argument("--images", required=True, nargs="+", metavar="PATH",
                        help="image files and/or folders to classify")
    parser.add_argument("--out", "-o", default="predictions.csv", metavar="CSV",
                        help="output table (default predictions.csv)")
    parser.add_argument("--explain", metavar="DIR",
                        help="also write one evidence-map PNG per image into DIR")
