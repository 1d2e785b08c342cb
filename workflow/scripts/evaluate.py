"""Rules evaluate / evaluate_shot: one model on the validation or novel episodes, at its
training shot or at another one of eval.shots (engine.evaluate.evaluate)."""
from subspace_fsl.engine.evaluate import evaluate
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    evaluate(cfg, snakemake.input.best, snakemake.wildcards.split, snakemake.params.out_dir,
             split_file=snakemake.input.split, cache_dir=snakemake.input.cache,
             shot=getattr(snakemake.params, "shot", None))
