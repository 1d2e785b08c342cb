"""The package's shape: no two modules import each other (a pair that does is missing a third
module), and report.py's successors keep tables and plots apart."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "subspace_fsl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every subspace_fsl module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("subspace_fsl"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("subspace_fsl"))
    return found


def test_no_two_modules_import_each_other():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a circle
    pairs = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                    if a in graph.get(b, set())
                    and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert pairs == [], pairs


def test_report_is_tables_and_plots_in_separate_modules():
    report = PACKAGE / "report"
    assert {p.name for p in report.glob("*.py")} == {"__init__.py", "common.py", "tables.py",
                                                      "plots.py", "pages.py"}
    assert "subspace_fsl.report.plots" not in _imports(report / "tables.py")
    assert "subspace_fsl.report.tables" not in _imports(report / "plots.py")
    assert max(len((report / n).read_text().splitlines()) for n in ("tables.py", "plots.py")) < 400
