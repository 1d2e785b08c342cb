"""Rule init_tracking: the MLflow store and experiment, before training (tracking.write_marker)."""
from subspace_fsl.snakemake_job import job
from subspace_fsl.tracking import write_marker

with job(snakemake) as cfg:
    write_marker(cfg, snakemake.output[0])
