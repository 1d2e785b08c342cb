"""Waiting on events, never on the clock.

A test waits for a file to appear, a line on a pipe, a server's answer or a process's exit,
checking all the while that the process it waits on is still alive (a dead one fails the test
at once, with its output). A busy machine only makes a test slower, never fails it. The one
guard against a real hang is ``HANG_S`` (default one hour; ``SUBSPACE_FSL_TEST_HANG_S``
overrides it): every wait and every subprocess here ends there at the latest.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

HANG_S = float(os.environ.get("SUBSPACE_FSL_TEST_HANG_S", "3600"))
_POLL_S = 0.01


def _alive(proc: subprocess.Popen, waiting_for: str) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"exited with {proc.returncode} while waiting for {waiting_for}:\n"
                             f"{_output(proc)}")


def _output(proc: subprocess.Popen) -> str:
    out, err = proc.communicate()
    text = (out or "") + (err or "")
    return text.decode(errors="replace") if isinstance(text, bytes) else text


def wait_until(predicate: Callable[[], bool], what: str,
               proc: subprocess.Popen | None = None, poll_s: float = _POLL_S) -> None:
    """Return once ``predicate()`` holds (asked every ``poll_s``); fail as soon as ``proc`` (if
    given) exited first."""
    started = time.monotonic()
    while not predicate():
        if proc is not None:
            _alive(proc, what)
        if time.monotonic() - started > HANG_S:  # a hang, not slowness: HANG_S is an hour
            raise AssertionError(f"hung: still waiting for {what} after {HANG_S:.0f} s")
        time.sleep(poll_s)


def wait_for_file(path: Path, proc: subprocess.Popen) -> None:
    """Return once ``path`` exists; fail as soon as ``proc`` exited without writing it."""
    wait_until(path.exists, f"{path} to appear", proc)


def wait_for_line(proc: subprocess.Popen, pattern: str) -> list[str]:
    """Read ``proc``'s stdout (text) up to the first line matching ``pattern``; the lines read,
    that one last. Fails if the pipe closes (the process ended) first."""
    lines: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if re.search(pattern, line):
            return lines
    proc.wait(timeout=HANG_S)
    raise AssertionError(f"exited with {proc.returncode} before printing /{pattern}/:\n"
                         + "".join(lines))


def wait_for_http(url: str, proc: subprocess.Popen) -> None:
    """Return once ``url`` answers 200 (a server ``proc`` starting up)."""

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status == 200
        except OSError:
            time.sleep(0.2)
            return False

    wait_until(answers, f"{url} to answer", proc)
