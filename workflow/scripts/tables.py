"""Rule tables: every results table as CSV, Markdown and LaTeX (report.write_tables)."""
from subspace_fsl.report import write_tables
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    write_tables(cfg)
