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
from subspace_fsl.config import ConfigError, load_config

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
    pass


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    pass


# --- engine commands (train, evaluate, predict) --------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    pass


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    pass


def _add_predict(sub: argparse._SubParsersAction) -> None:
    pass


# --- workflow commands (split, tracking set-up, report) ------------------------------------


def _add_workflow_commands(sub: argparse._SubParsersAction) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subspace-fsl",
        description="Few-shot sub-category classification with multiple feature subspaces.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for add in (_add_synth, _add_prepare, _add_train, _add_evaluate, _add_predict,
                _add_workflow_commands):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"subspace-fsl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
