"""Rule explain: evidence maps and part measures of the chosen models (explain.run_explain)."""
from subspace_fsl.explain.pipeline import run_explain
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    run_explain(cfg)
