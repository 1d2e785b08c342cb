"""Rule plots: every results plot as PNG and PDF, logged into the benchmark's MLflow parent
run (benchmark_tracking.publish_plots)."""
from subspace_fsl.benchmark_tracking import publish_plots
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    publish_plots(cfg)
