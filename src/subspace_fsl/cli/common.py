"""What every sub-command shares: ``--config`` / ``--set`` and the settings they give."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from subspace_fsl.config import load_config

Handler = Callable[[argparse.Namespace], int | None]
SubParsers = argparse._SubParsersAction


def config_arguments(parser: argparse.ArgumentParser) -> None:
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


def command(
    sub: SubParsers, name: str, handler: Handler, help_text: str, description: str | None = None
) -> argparse.ArgumentParser:
    """One sub-command with the settings arguments, run by ``handler``."""
    parser = sub.add_parser(name, help=help_text, description=description or help_text)
    config_arguments(parser)
    parser.set_defaults(handler=handler)
    return parser
