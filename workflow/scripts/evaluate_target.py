"""Rule evaluate_target: one model on a cross-domain target's fixed episodes
(engine.target.evaluate_target)."""
from subspace_fsl.engine.target import evaluate_target
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    evaluate_target(cfg, snakemake.input.best, snakemake.wildcards.target,
                    snakemake.params.out_dir, cache_dir=snakemake.input.cache)
