"""``subspace-fsl <command>``: parse arguments, load the configuration, call the package.

Every command takes ``--config FILE`` (the workflow's config.yaml keys) and any number of
``--set key.path=value`` overrides. The commands live by stage, each module holding its
parsers and their handlers: :mod:`.data` (synth, prepare, split), :mod:`.engine` (pretrain,
train, evaluate, predict), :mod:`.report` (init-tracking, select, tables, plots, explain,
runs, show-config). The work itself lives in the package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from subspace_fsl import __version__
from subspace_fsl.cli import data, engine, report
from subspace_fsl.cli.common import Handler
from subspace_fsl.errors import DEBUG_ENV, debug_enabled, exit_code, user_message

STAGES = (data, engine, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subspace-fsl",
        description="Few-shot sub-category classification with multiple feature subspaces.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for stage in STAGES:
        stage.register(sub)
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
