"""Handlers of ``subspace-fsl train | evaluate | predict`` (the parsers live in ``cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from subspace_fsl.config import ConfigError, atomic_write_text, load_config, save_config


def setup_logging() -> None:
    """Plain timestamped lines on stderr, unless the caller configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # MLflow's own INFO lines (database migrations, run links) drown the training log;
    # MLflow reads this when it is imported, which happens later
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def run_train(args: argparse.Namespace) -> int:
    from subspace_fsl import tracking
    from subspace_fsl.engine.train import train

    setup_logging()
    cfg = load_config(args.config, args.overrides)
    tracking.check_store(cfg)  # before any work: an unreachable server fails in seconds
    summary = train(cfg, args.out, split_file=args.split_file, cache_dir=args.cache)
    print(json.dumps(summary, indent=2))
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from subspace_fsl.engine.pretrain import pretrain
    from subspace_fsl.paths import pretrain_dir

    setup_logging()
    cfg = load_config(args.config, args.overrides)
    out = args.out or pretrain_dir(cfg)
    summary = pretrain(cfg, out, split_file=args.split_file, cache_dir=args.cache)
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
    out = Path(args.out) if args.out else run / "eval" / args.split
    summary = evaluate(
        cfg, checkpoint, args.split, out, split_file=args.split_file, cache_dir=args.cache
    )
    print(json.dumps(summary, indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from subspace_fsl.engine.predict import format_predictions, predict, resolve_checkpoint

    setup_logging()
    cfg = load_config(args.config, args.overrides)
    checkpoint = resolve_checkpoint(args.checkpoint, getattr(args, "model", None), cfg)
    table = predict(checkpoint, args.support, args.images, cfg, args.explain)
    out = Path(args.out)
    atomic_write_text(out, table.to_csv(index=False))
    save_config(cfg, out.with_name(f"{out.stem}.config.yaml"))
    print(format_predictions(table))
    print(f"wrote {out}", file=sys.stderr)
    return 0
