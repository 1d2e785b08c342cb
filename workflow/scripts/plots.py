"""Rule plots: every results plot as PNG and PDF (report.write_plots)."""
from subspace_fsl.report import write_plots
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    write_plots(cfg)
