"""The report's HTML pages (report.pages): a Markdown table file as an HTML table, and the
headline of the report's first page from main.csv."""

from __future__ import annotations

import pandas as pd

from subspace_fsl.config import load_config
from subspace_fsl.report.pages import headline_html, markdown_html


def test_a_markdown_table_file_becomes_one_html_table_with_its_caption():
    text = ("**Table main.** Novel-class accuracy (`tiny`).\n\n"
            "|  | 5-way 1-shot | 5-way 5-shot |\n|---|---|---|\n"
            "| protonet | 50.00 ± 1.00 | 60.00 ± 2.00 |\n| a<b | x | y |\n")
    out = markdown_html(text)
    assert out.startswith("<p><b>Table main.</b> Novel-class accuracy (<code>tiny</code>).</p>")
    assert out.count("<table>") == 1 and out.count("<tr>") == 3
    assert "<th>5-way 5-shot</th>" in out and "<td>60.00 ± 2.00</td>" in out
    assert "<td>a&lt;b</td>" in out and "---" not in out


def test_the_headline_names_every_cell_and_the_best_baseline():
    cfg = load_config(None, ["dataset.name=birds"])
    main = pd.DataFrame({
        "method": ["multisubspace", "protonet", "dsn"] * 2,
        "way": [5] * 6, "shot": [5] * 6, "eval_shot": [5, 5, 5, 1, 1, 1],
        "mean": [62.05, 64.62, 66.47, 51.11, 53.15, 47.47], "ci95": [1.0] * 6})
    out = headline_html(cfg, main)
    assert "novel-class accuracy (%) on birds" in out
    assert ("<b>5-way 5-shot</b>: multisubspace 62.05 ± 1.00 %, best baseline dsn "
            "66.47 ± 1.00 % (difference -4.42 points)") in out
    assert ("<b>5-way 1-shot (trained 5-shot)</b>: multisubspace 51.11 ± 1.00 %, best "
            "baseline protonet 53.15 ± 1.00 %") in out
    assert "<td>dsn</td><td>66.47 ± 1.00</td><td>47.47 ± 1.00</td>" in out
