# One training job per grid cell and seed, and per baseline: all on the same episode seeds.


rule train:
    input:
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
        tracking=paths.tracking_marker(config),
    output:
        best=RUN_DIR / "best.pt",
        history=RUN_DIR / "history.csv",
        done=RUN_DIR / "done",
    params:
        settings=run_args,
        runtime=RUNTIME_ARGS,
        out=lambda wildcards: paths.run_dir(config, wildcards.method, wildcards.run),
    log:
        LOGS / "train" / "{method}" / "{run}.log",
    benchmark:
        BENCHMARKS / "train" / "{method}" / "{run}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=720,
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "subspace-fsl train {params.settings} {params.runtime} --set runtime.threads={threads}"
        " --split-file {input.split} --cache {input.cache} --out {params.out} > {log} 2>&1"
