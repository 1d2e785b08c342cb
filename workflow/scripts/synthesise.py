"""Rule synthesise: the synthetic data set in CUB's layout (data.synth.generate)."""
from subspace_fsl.data.synth import generate
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    generate(snakemake.output[0], **cfg["dataset"]["synthetic"], workers=snakemake.threads)
