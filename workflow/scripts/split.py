"""Rule split: the base / validation / novel class split (data.splits.write_split)."""
from subspace_fsl.data.splits import write_split
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    write_split(cfg, snakemake.input[0], snakemake.output[0])
