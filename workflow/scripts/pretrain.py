"""Rule pretrain: the backbone's batch classification on the base classes, once per data set
and backbone (engine.pretrain.pretrain)."""
from subspace_fsl.engine.pretrain import pretrain
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    pretrain(cfg, snakemake.params.out_dir, split_file=snakemake.input.split,
             cache_dir=snakemake.input.cache, restart_changed=True)
