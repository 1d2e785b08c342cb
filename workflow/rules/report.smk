# Tables (CSV, Markdown, LaTeX) and plots (PNG, PDF); `snakemake --report` gathers them.


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
