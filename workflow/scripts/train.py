"""Rule train: one grid cell or baseline into its run folder (engine.train.train); the job
re-runs when the run's settings changed, so a folder made with other settings starts afresh."""
from subspace_fsl.engine.train import train
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    train(cfg, snakemake.params.run_dir, split_file=snakemake.input.split,
          cache_dir=snakemake.input.cache or None,
          features_file=snakemake.input.features or None, restart_changed=True)
