"""``subspace-fsl <command>``: parse arguments, load the configuration, call the package.

Every command takes ``--config FILE`` (the workflow's config.yaml keys) and any number of
``--set key.path=value`` overrides. Each ``_add_<command>`` function below registers one
sub-command; the work itself lives in the package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from subspace_fsl import __version__
from subspace_fsl.config import load_config
from subspace_fsl.errors import DEBUG_ENV, debug_enabled, exit_code, user_message

Handler = Callable[[argparse.Namespace], int | None]


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML settings file (same keys as config.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.shot=1 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return load_config(args.config, args.overrides)


# --- data commands (synth, prepare) --------------------------------------------------------


def _add_synth(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "synth", help="write the synthetic sub-category data set in CUB's layout",
        description="Write the synthetic data set (CUB-200-2011's layout) to --out. Options "
                    "left out take dataset.synthetic.* from --config/--set or the schema.")
    _config_arguments(parser)
    parser.add_argument("--out", required=True, help="folder to create (must not exist)")
    parser.add_argument("--classes", type=int, help="number of classes")
    parser.add_argument("--images-per-class", type=int, help="images per class")
    parser.add_argument("--size", type=int, help="image side in pixels")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    def run(args: argparse.Namespace) -> int:
        import logging

        from subspace_fsl.data.synth import generate

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        settings = config_from_args(args)["dataset"]["synthetic"]
        chosen = {key: getattr(args, key) if getattr(args, key) is not None else settings[key]
                  for key in ("classes", "images_per_class", "size", "seed")}
        try:
            out = generate(args.out, **chosen, workers=args.workers)
        except FileExistsError as exc:
            raise ValueError(str(exc)) from None
        print(f"wrote {chosen['classes']} classes x {chosen['images_per_class']} images "
              f"at {chosen['size']} px to {out}")
        return 0

    parser.set_defaults(handler=run)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prepare", help="raw data (download + extract, or synthesise) -> image cache",
        description="Make the configuration's raw data available (download and extract "
                    "CUB-200-2011, generate the synthetic set, or read a folder of class "
                    "sub-folders) and build or reuse its image cache.")
    _config_arguments(parser)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default 2)")

    def run(args: argparse.Namespace) -> int:
        import logging

        from subspace_fsl.data.cache import ImageCache, prepare

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            cache = ImageCache.open(prepare(config_from_args(args), workers=args.workers))
        except (ConnectionError, FileExistsError) as exc:  # reported like the other errors
            raise ValueError(str(exc)) from None
        n, _, height, width = cache.images.shape
        print(f"cache {cache.directory}: {n} images, {len(cache.class_names)} classes, "
              f"{height}x{width} px, {cache.images.nbytes / 1e6:.1f} MB, stamp {cache.stamp[:12]}")
        return 0

    parser.set_defaults(handler=run)


# --- engine commands (train, evaluate, predict) --------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    from subspace_fsl.engine.commands import run_train

    parser = sub.add_parser(
        "train", help="episodic meta-training of one configuration (resumes; no-op when done)",
        description="Meta-train a backbone and head on base-class episodes, validating on "
                    "fixed validation-class episodes; writes config.yaml, checkpoint.pt, "
                    "best.pt, history.csv, train_summary.json and done into --out.")
    _config_arguments(parser)
    parser.add_argument("--out", "-o", required=True, metavar="RUN_DIR",
                        help="run directory (created; a killed run resumes from it)")
    parser.add_argument("--split-file", metavar="JSON",
                        help="class split file (default {results_dir}/splits/{dataset}.json; "
                             "made from the split settings when missing)")
    parser.add_argument("--cache", metavar="DIR",
                        help="image cache directory (default: built from the dataset settings)")
    parser.set_defaults(handler=run_train)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    from subspace_fsl.engine.commands import run_pretrain

    parser = sub.add_parser(
        "pretrain", help="pre-train the backbone on the base classes (once per data set and "
                         "backbone; for train.init=pretrained)",
        description="Batch classification of the base classes with early stopping on "
                    "validation episodes (ProtoNet on the features); resumes; writes "
                    "config.yaml, checkpoint.pt, backbone.pt, history.csv, "
                    "pretrain_summary.json and done into --out.")
    _config_arguments(parser)
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="default {results_dir}/pretrain/{dataset}/{backbone}")
    parser.add_argument("--split-file", metavar="JSON", help="class split file (as for train)")
    parser.add_argument("--cache", metavar="DIR", help="image cache directory (as for train)")
    parser.set_defaults(handler=run_pretrain)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from subspace_fsl.engine.commands import run_evaluate

    parser = sub.add_parser(
        "evaluate", help="evaluate a trained run on fixed novel (or validation) episodes",
        description="Embed every image of the split once, run eval.episodes episodes on the "
                    "cached features and write episodes.csv and summary.json.")
    _config_arguments(parser)
    parser.add_argument("--run", required=True, metavar="RUN_DIR",
                        help="a train --out directory (its config.yaml is the default --config)")
    parser.add_argument("--split", choices=("novel", "val"), default="novel",
                        help="classes to evaluate on (val: for choosing lambdas); default novel")
    parser.add_argument("--checkpoint", metavar="PT", help="default RUN_DIR/best.pt")
    parser.add_argument("--out", "-o", metavar="DIR", help="default RUN_DIR/eval/SPLIT")
    parser.add_argument("--split-file", metavar="JSON", help="class split file (as for train)")
    parser.add_argument("--cache", metavar="DIR", help="image cache directory (as for train)")
    parser.set_defaults(handler=run_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from subspace_fsl.engine.commands import run_predict

    parser = sub.add_parser(
        "predict", help="classify images against a support folder with a trained checkpoint",
        description="Print and write (CSV) each image's predicted class, its distance to every "
                    "support class and each feature subspace's share of that distance.")
    _config_arguments(parser)
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
    parser.set_defaults(handler=run_predict)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "explain", help="evidence maps and part measures of the chosen models (novel episodes)",
        description="Per-subspace evidence maps of the models chosen in the selection file "
                    "(every lambda1 at the chosen lambda2, and the baselines) on novel "
                    "episodes: specialization, profile diversity, RV matrix, principal angles, "
                    "the lambda1 > 0 vs lambda1 = 0 paired test, and figures (docs/explain.md).")
    _config_arguments(parser)
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="output folder (default {results_dir}/explain/{dataset})")

    def run(args: argparse.Namespace) -> int:
        from subspace_fsl.engine.commands import setup_logging
        from subspace_fsl.explain.pipeline import run_explain

        setup_logging()
        print(f"wrote {run_explain(config_from_args(args), args.out)}")
        return 0

    parser.set_defaults(handler=run)


# --- workflow commands (split, tracking set-up, report) ------------------------------------


def _add_workflow_commands(sub: argparse._SubParsersAction) -> None:
    from subspace_fsl import workflow_commands as wc

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        _config_arguments(parser)
        parser.set_defaults(handler=handler)
        return parser

    parser = command("split", wc.run_split,
                     "make the base / validation / novel class split of the image cache")
    parser.add_argument("--cache", metavar="DIR", help="image cache (default: from the settings)")
    parser.add_argument("--out", "-o", metavar="JSON",
                        help="split file (default {results_dir}/splits/{dataset}.json)")
    parser = command("init-tracking", wc.run_init_tracking,
                     "create the MLflow store and the data set's experiment (before training)")
    parser.add_argument("--out", "-o", metavar="JSON",
                        help="marker file (default {results_dir}/tracking/{dataset}.json)")
    command("select", wc.run_select,
            "choose lambda1, lambda2 per (way, shot, S) and S per (way, shot) on validation")
    command("tables", wc.run_tables, "write every results table (CSV, Markdown, LaTeX)")
    command("plots", wc.run_plots, "draw every results plot (PNG, PDF)")
    command("runs", wc.run_runs, "list the runs of the grid (method/run-name), one a line")
    command("show-config", wc.run_show_config,
            "print the resolved settings (schema defaults filled in) as YAML")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subspace-fsl",
        description="Few-shot sub-category classification with multiple feature subspaces.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for add in (_add_synth, _add_prepare, _add_pretrain, _add_train, _add_evaluate, _add_predict,
                _add_workflow_commands, _add_explain):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user's mistake or an environment failure is one line on stderr and
    exit code 2 (``errors.TRANSLATIONS``), a bug keeps its traceback; ``--debug`` shows all."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except BaseException as exc:
        message = None if args.debug or debug_enabled() else user_message(exc)
        if message is None:
            raise
        print(f"subspace-fsl {args.command}: error: {message}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
