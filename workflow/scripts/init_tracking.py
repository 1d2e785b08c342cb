"""Rule init_tracking: the MLflow store, experiment and the benchmark's parent run, before
training (benchmark_tracking.write_marker)."""
from subspace_fsl.benchmark_tracking import write_marker
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    write_marker(cfg, snakemake.output[0])
