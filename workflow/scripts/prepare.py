"""Rule prepare: raw data (download + extract, or read) -> image cache (data.cache.prepare)."""
from subspace_fsl.data.cache import prepare
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    prepare(cfg, cache_dir=snakemake.output[0], workers=snakemake.threads)
