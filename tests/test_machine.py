"""``python -m subspace_fsl.machine``: the machine's facts, then each table with its SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from subspace_fsl.machine import describe, main


def test_the_machine_is_printed_before_the_table_and_its_hash(tmp_path: Path, capsys) -> None:
    table = tmp_path / "main.md"
    table.write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert main([str(table)]) == 0
    out = capsys.readouterr().out
    facts = describe()
    assert facts["torch"] == torch.__version__ and int(facts["torch_threads"]) >= 1
    assert out.startswith(f"cpu: {facts['cpu']}\n") and f"torch: {torch.__version__}\n" in out
    assert f"{table} (sha256 {hashlib.sha256(table.read_bytes()).hexdigest()}):" in out
    assert out.rstrip().endswith("| 1 | 2 |")


def test_a_missing_table_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.md"
    assert main([str(missing)]) == 2
    assert capsys.readouterr().err == f"subspace_fsl.machine: error: {missing} is not a file\n"
