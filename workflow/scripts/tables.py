"""Rule tables: every results table as CSV, Markdown and LaTeX, logged with the selection
into the benchmark's MLflow parent run (benchmark_tracking.publish_tables)."""
from subspace_fsl.benchmark_tracking import publish_tables
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    publish_tables(cfg)
