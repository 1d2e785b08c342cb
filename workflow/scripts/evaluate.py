"""Rule evaluate: one model on the validation or novel episodes (engine.evaluate.evaluate)."""
from subspace_fsl.engine.evaluate import evaluate
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    evaluate(cfg, snakemake.input.best, snakemake.wildcards.split, snakemake.params.out_dir,
             split_file=snakemake.input.split, cache_dir=snakemake.input.cache or None,
             features_file=snakemake.input.features or None)
