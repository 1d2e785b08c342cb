"""The one place where an exception becomes what a user reads: one line, exit code 2.

``cli.main`` hands every exception of a command to :func:`user_message`. The table
``TRANSLATIONS`` maps the exception types that mean "the input or the environment is wrong"
(bad settings, unreadable or missing files, a read-only or full disk, a symlink loop, a file
that is not what a setting says, memory that cannot be allocated) to a message; the checks
that know *which* file or setting is wrong raise those types at the right depth (e.g.
``config.read_yaml`` names the config file, ``checkpoint.torch_load_plain`` the checkpoint).
Anything else is a bug and keeps its traceback. ``subspace-fsl --debug <command>`` or
``SUBSPACE_FSL_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Callable

import yaml

DEBUG_ENV = "SUBSPACE_FSL_DEBUG"

#: what a user can do about an OS error, by errno
_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free space and run again: finished files are intact",
    errno.EDQUOT: "the disk quota is exceeded; free space and run again",
    errno.EROFS: "the file system is read-only; choose a writable results_dir / --out",
    errno.EACCES: "permission denied; choose a writable results_dir / --out",
    errno.EPERM: "operation not permitted; choose a writable results_dir / --out",
    errno.ELOOP: "a symbolic link points (eventually) at itself",
    errno.EISDIR: "a folder where a file was expected",
    errno.ENOTDIR: "a file where a folder was expected",
}


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _os_error(exc: OSError) -> str:
    names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    what = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno or 0)
    text = f"{what}: {' -> '.join(names)}" if names else what
    return f"{text} ({hint})" if hint and hint.lower() not in text.lower() else text


def _yaml_error(exc: yaml.YAMLError) -> str:
    from subspace_fsl.config import yaml_problem

    return f"invalid YAML: {yaml_problem(exc)}"


def _unicode_error(exc: UnicodeDecodeError) -> str:
    return f"a file that should be UTF-8 text is not: {exc.reason} at byte {exc.start}"


def _unpickling_error(exc: pickle.UnpicklingError) -> str:
    return "a file is not a plain-data torch file (loaded with weights_only=True)"


def _allocation_error(exc: BaseException) -> str | None:
    text = str(exc)
    if isinstance(exc, MemoryError) or any(
        word in text for word in ("can't allocate memory", "out of memory", "Cannot allocate")
    ):
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        return (f"out of memory: {first} (lower eval.batch_size, the model's sizes or "
                f"runtime.cache_on_device)")
    return None  # any other RuntimeError is a bug: keep its traceback


def _value_error(exc: ValueError) -> str:
    return str(exc)


def _interrupted(exc: KeyboardInterrupt) -> str:
    return "interrupted"


#: (exception type, message or None for "not a user error"), the first match wins; the order
#: matters where one type subclasses another (UnicodeDecodeError is a ValueError)
TRANSLATIONS: tuple[tuple[type[BaseException], Callable[..., str | None]], ...] = (
    (UnicodeDecodeError, _unicode_error),
    (pickle.UnpicklingError, _unpickling_error),
    (yaml.YAMLError, _yaml_error),
    (ValueError, _value_error),  # ConfigError, CheckpointError, DatasetError, ...
    (OSError, _os_error),  # missing, unreadable, read-only, full, symlink loops
    (MemoryError, _allocation_error),
    (RuntimeError, _allocation_error),  # torch's allocators raise RuntimeError
    (KeyboardInterrupt, _interrupted),
)

EXIT_CODES: dict[type[BaseException], int] = {KeyboardInterrupt: 130}


def user_message(exc: BaseException) -> str | None:
    """One line for a user's mistake or an environment failure; None for a bug."""
    for kind, translate in TRANSLATIONS:
        if isinstance(exc, kind):
            message = translate(exc)
            if message is None:
                return None
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            return "; ".join(lines) or type(exc).__name__
    return None


def exit_code(exc: BaseException) -> int:
    return next((code for kind, code in EXIT_CODES.items() if isinstance(exc, kind)), 2)
