"""Rule prepare_target: a cross-domain target's raw data -> its image cache at the model's
preprocessing (engine.target.prepare_target)."""
from subspace_fsl.engine.target import prepare_target
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    prepare_target(cfg, snakemake.wildcards.target, snakemake.output[0],
                   workers=snakemake.threads)
