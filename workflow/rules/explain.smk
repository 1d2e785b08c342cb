# The explain step: per-subspace evidence maps of the chosen models on novel episodes, their
# part profiles, specialization and diversity, the RV matrix, and the lambda1 > 0 vs
# lambda1 = 0 paired test (docs/explain.md). Reads trained models only.
from subspace_fsl.explain import pipeline as fsl_explain


rule explain:
    input:
        model_files(),
        selection=paths.selection_path(config),
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
    output:
        fsl_explain.output_files(config),
    params:
        settings=CONFIG_ARGS,
        runtime=RUNTIME_ARGS,
    log:
        LOGS / "explain.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "subspace-fsl explain {params.settings} {params.runtime} --set runtime.threads={threads}"
        " > {log} 2>&1"
