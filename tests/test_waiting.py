"""The tests' waiting helpers wait for the event, however late, and fail at once when the process
they wait on died first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_for_file, wait_for_line, wait_until


def python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], text=True, **kwargs)


def test_a_late_file_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "late"
    proc = python(f"import time, pathlib; time.sleep(1.5); pathlib.Path({str(path)!r}).touch();"
                  " time.sleep(30)")
    try:
        wait_for_file(path, proc)
        assert path.exists() and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_dies_first_fails_the_wait_with_its_output(tmp_path: Path) -> None:
    proc = python("import sys; print('the reason'); sys.exit(3)", stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT)
    with pytest.raises(AssertionError, match=r"(?s)exited with 3 while waiting for .*the reason"):
        wait_for_file(tmp_path / "never", proc)
    with pytest.raises(AssertionError, match="exited with 0 while waiting for flag"):
        wait_until(lambda: False, "flag", python("pass"))


def test_a_line_on_a_pipe_is_waited_for_and_its_absence_fails() -> None:
    proc = python("import time; print('one', flush=True); time.sleep(1); print('ready 42',"
                  " flush=True); time.sleep(30)", stdout=subprocess.PIPE)
    try:
        assert wait_for_line(proc, r"ready \d+") == ["one\n", "ready 42\n"]
    finally:
        proc.kill()
        proc.wait()
    quiet = python("print('nothing')", stdout=subprocess.PIPE)
    with pytest.raises(AssertionError, match=r"exited with 0 before printing /ready/"):
        wait_for_line(quiet, "ready")
