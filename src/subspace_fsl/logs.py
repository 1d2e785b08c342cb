"""Log lines of every command and job: timestamped, on stderr, MLflow's chatter quieted."""

from __future__ import annotations

import logging
import os
import sys


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
