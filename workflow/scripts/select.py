"""Rule select: lambdas per (way, shot, S) and S per (way, shot) on validation only
(selection.run_selection)."""
from subspace_fsl.selection import run_selection
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    run_selection(cfg)
