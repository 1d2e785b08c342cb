"""Rules evaluate_cells_*: the cells of one group evaluated in one process on one split
(engine.evaluate.evaluate_many), each into its own eval folder."""
from subspace_fsl.engine.evaluate import evaluate_many
from subspace_fsl.snakemake_job import cell_configs, job

with job(snakemake):
    evaluate_many(cell_configs(snakemake.params, snakemake.rule), snakemake.input.best,
                  snakemake.params.split, snakemake.params.out_dirs,
                  split_file=snakemake.input.split, cache_dir=snakemake.input.cache or None,
                  features_file=snakemake.input.features or None)
