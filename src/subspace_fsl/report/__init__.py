"""The benchmark's reports, read from the files the engine writes per run
(``eval/{val,novel}/episodes.csv``, ``history.csv``), the class split and the validation
choices of ``subspace_fsl.selection``:

- :mod:`.tables`: every table (``TABLE_NAMES``) as CSV, Markdown and LaTeX;
- :mod:`.plots`: every plot (``PLOT_NAMES``) as PNG and PDF;
- :mod:`.common`: what both share (descriptions of the split and protocol, per-cell
  summaries, setting labels).

The names the workflow and the tracking stage use are importable from here.
"""

from subspace_fsl.report.common import protocol_description, split_description
from subspace_fsl.report.plots import PLOT_FORMATS, PLOT_NAMES, write_plots
from subspace_fsl.report.tables import (
    CONSTRAINT_VARIANTS,
    TABLE_FORMATS,
    TABLE_NAMES,
    write_tables,
)
from subspace_fsl.results import load_results

__all__ = [
    "CONSTRAINT_VARIANTS",
    "PLOT_FORMATS",
    "PLOT_NAMES",
    "TABLE_FORMATS",
    "TABLE_NAMES",
    "load_results",
    "protocol_description",
    "split_description",
    "write_plots",
    "write_tables",
]
