# Tables (CSV, Markdown, LaTeX) and plots (PNG, PDF); `snakemake --report` gathers them, with
# the tables as HTML pages (shown inline) and the headline on its first page (report_pages).
import sys

from subspace_fsl.report import pages as fsl_pages


report: "../report/workflow.rst"


# the grid's cells that are duplicates by construction (lambda1 at S=1), dropped: said once
if grid.dropped_duplicates(config):
    print(grid.dropped_duplicates(config), file=sys.stderr)


rule tables:
    input:
        eval_files("val"),
        eval_files("novel"),
        fsl_targets.eval_files(config),
        selection=paths.selection_path(config),
        split=paths.split_path(config),
        tracking=paths.tracking_marker(config),
    output:
        [
            report(
                path,
                caption=f"../report/{path.stem}.rst",
                category="Tables",
                subcategory=path.suffix[1:],
                labels={"table": path.stem, "format": path.suffix[1:]},
            )
            for path in table_files()
        ],
    log:
        LOGS / "tables.log",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
    params:
        settings=GRID_SETTINGS,
    message:
        f"tables of {DATASET}"
    script:
        "../scripts/tables.py"


rule plots:
    input:
        eval_files("val"),
        eval_files("novel"),
        history_files(),
        selection=paths.selection_path(config),
        split=paths.split_path(config),
        tracking=paths.tracking_marker(config),
    output:
        [
            (
                report(
                    path,
                    caption=f"../report/{path.stem}.rst",
                    category="Plots",
                    labels={"plot": path.stem, "format": path.suffix[1:]},
                )
                if path.suffix == ".png"
                else path
            )
            for path in plot_files()
        ],
    log:
        LOGS / "plots.log",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
    params:
        settings=GRID_SETTINGS,
    message:
        f"plots of {DATASET}"
    script:
        "../scripts/plots.py"


rule report_pages:
    input:
        table_files(("md", "csv")),
        [path for path in fsl_pages.page_sources(config).values()],
    output:
        [
            report(
                path,
                caption=f"../report/{path.stem}.rst",
                category="Explain" if path.stem.startswith("explain") else "Tables",
                subcategory="html",
                labels={"table": path.stem, "format": "html"},
            )
            for path in fsl_pages.page_files(config)
            if path.stem != "headline"
        ],
        fsl_pages.pages_dir(config) / "headline.html",
    log:
        LOGS / "report_pages.log",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
    params:
        settings=GRID_SETTINGS,
    message:
        f"report pages of {DATASET}"
    script:
        "../scripts/report_pages.py"
