"""Rules train_cells_*: the cells of one group trained together (engine.cells.train_cells),
each into its own run folder; a folder made with other settings starts afresh."""
from subspace_fsl.engine.cells import train_cells
from subspace_fsl.snakemake_job import cell_configs, job

with job(snakemake):
    train_cells(cell_configs(snakemake.params, snakemake.rule), snakemake.params.run_dirs,
                split_file=snakemake.input.split, cache_dir=snakemake.input.cache or None,
                features_file=snakemake.input.features or None, restart_changed=True)
