"""HTML pages of the tables for Snakemake's report (``snakemake --report``), which shows an
HTML result inline where it offers a CSV or Markdown file only as a download.

- :func:`markdown_page`: a Markdown file of this package (a ``**Table x.** caption`` paragraph
  and pipe tables: ``tables/{d}/*.md``, ``explain/{d}/*.md``) as one HTML page;
- :func:`headline_html`: the report's first page: per evaluation cell of ``main.csv``, the
  method's novel accuracy against the best baseline, and every method's cell (mean ± CI, %).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from subspace_fsl import grid, paths

STYLE = ("<style>body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse;"
         "margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
         "th{background:#f0f0f0}</style>")


def _inline(text: str) -> str:
    """Escape, then ``**bold**`` and `` `code` ``."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(text: str) -> str:
    """The body of a Markdown text made of paragraphs and pipe tables (first row: header;
    the ``|---|`` rule skipped)."""
    out: list[str] = []
    rows: list[str] = []

    def close() -> None:
        if rows:
            head, *body = [_cells(r) for r in rows if not re.fullmatch(r"\|[-:| ]+\|", r)]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                       + "</tr>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r)
                                           + "</tr>" for r in body) + "</table>")
            rows.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            rows.append(line.strip())
            continue
        close()
        if line.strip():
            out.append(f"<p>{_inline(line.strip())}</p>")
    close()
    return "\n".join(out)


def markdown_page(source: str | Path, title: str) -> str:
    """A whole HTML page of the Markdown file ``source``."""
    body = markdown_html(Path(source).read_text(encoding="utf-8"))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title>{STYLE}</head><body>{body}</body></html>\n")


def _cell_text(row: Mapping[str, Any]) -> str:
    return f"{row['mean']:.2f} ± {row['ci95']:.2f}"


def headline_html(cfg: Mapping[str, Any], main: pd.DataFrame) -> str:
    """The headline (an HTML fragment): per evaluation cell (way, trained shot, evaluation
    shot, and target where the table has a ``target`` column), the method's accuracy and the
    best baseline's, then every method's cell; all in % as ``main.csv``."""
    from subspace_fsl.report.common import eval_label

    method = grid.method_name(cfg)
    table = main.copy()
    if "eval_shot" not in table.columns:
        table["eval_shot"] = table["shot"]
    if "target" not in table.columns:
        table["target"] = cfg["dataset"]["name"]
    table["target"] = table["target"].fillna(cfg["dataset"]["name"])
    keys = ["target", "way", "shot", "eval_shot"]
    lines, header, rows = [], [], {}
    for (target, way, shot, eval_shot), cell in table.groupby(keys, sort=False):
        label = eval_label(int(way), int(shot), int(eval_shot))
        if table["target"].nunique() > 1 or target != cfg["dataset"]["name"]:
            label = f"{label} on {target}"
        header.append(label)
        for row in cell.to_dict("records"):
            rows.setdefault(row["method"], {})[label] = _cell_text(row)
        ours = cell[cell["method"] == method]
        others = cell[(cell["method"] != method) & cell["mean"].notna()]
        if ours.empty or others.empty:
            continue
        mine, best = ours.iloc[0], others.loc[others["mean"].idxmax()]
        lines.append(
            f"<li><b>{html.escape(label)}</b>: {html.escape(method)} "
            f"{_cell_text(mine)} %, best baseline {html.escape(str(best['method']))} "
            f"{_cell_text(best)} % (difference {mine['mean'] - best['mean']:+.2f} points)</li>")
    grid_rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{html.escape(cells.get(h, ''))}</td>" for h in header) + "</tr>"
        for name, cells in rows.items())
    return (f"<h2>Headline: novel-class accuracy (%) on {html.escape(str(cfg['dataset']['name']))}"
            f"</h2><ul>{''.join(lines)}</ul><table class='headline'><tr><th>method</th>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{grid_rows}</table>"
            "<p>Each method at the settings its validation accuracy chose (mean over the "
            "evaluation episodes ± 95% CI); the full tables are under Tables and Explain.</p>\n")


def page_sources(cfg: Mapping[str, Any]) -> dict[str, Path]:
    """Every HTML page of the report and the Markdown file it renders: every table
    (``tables/{d}/{name}.md``) and the explain step's tables (``explain_*``)."""
    from subspace_fsl.explain.outputs import explain_dir
    from subspace_fsl.report.tables import TABLE_NAMES

    sources = {name: paths.tables_dir(cfg) / f"{name}.md" for name in TABLE_NAMES}
    sources["explain"] = explain_dir(cfg) / "explain.md"
    sources["explain_paired"] = explain_dir(cfg) / "paired.md"
    return sources


def pages_dir(cfg: Mapping[str, Any]) -> Path:
    return paths.results_dir(cfg) / "report" / paths.dataset_name(cfg)


def page_files(cfg: Mapping[str, Any]) -> list[Path]:
    """The pages :func:`write_pages` writes: ``{name}.html`` and ``headline.html``."""
    out = pages_dir(cfg)
    return [*(out / f"{name}.html" for name in page_sources(cfg)), out / "headline.html"]


def write_pages(cfg: Mapping[str, Any], names: Iterable[str] | None = None) -> list[Path]:
    """Every page of :func:`page_files` (atomically)."""
    from subspace_fsl.config import atomic_write_text

    out = pages_dir(cfg)
    written = []
    for name, source in page_sources(cfg).items():
        if names is not None and name not in names:
            continue
        path = out / f"{name}.html"
        atomic_write_text(path, markdown_page(source, f"{name} ({paths.dataset_name(cfg)})"))
        written.append(path)
    headline = out / "headline.html"
    main = pd.read_csv(paths.tables_dir(cfg) / "main.csv")
    atomic_write_text(headline, headline_html(cfg, main))
    return [*written, headline]
