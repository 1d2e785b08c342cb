# The explain step: per-subspace evidence maps of the chosen models on novel episodes, their
# part profiles, specialization and diversity, the RV matrix, and the lambda1 > 0 vs
# lambda1 = 0 paired test (docs/explain.md). Reads trained models only.
from subspace_fsl.explain import outputs as fsl_explain


rule explain:
    input:
        model_files(),
        selection=paths.selection_path(config),
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
    output:
        fsl_explain.output_files(config),
    log:
        LOGS / "explain.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=GRID_SETTINGS,
        runtime=runtime_settings,
    message:
        f"explain the chosen models of {DATASET}"
    script:
        "../scripts/explain.py"
