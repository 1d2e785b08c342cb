# Every model on the validation and on the novel classes (eval.episodes episodes, one episode
# seed for all), then lambda1, lambda2 (per way, shot, S) and S chosen on validation only.


rule evaluate:
    input:
        best=RUN_DIR / "best.pt",
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
    output:
        episodes=EVAL_DIR / "episodes.csv",
        summary=EVAL_DIR / "summary.json",
    params:
        settings=run_args,
        runtime=RUNTIME_ARGS,
        run=lambda wildcards: paths.run_dir(config, wildcards.method, wildcards.run),
        out=lambda wildcards: paths.eval_dir(
            config, wildcards.method, wildcards.split, wildcards.run
        ),
    log:
        LOGS / "evaluate" / "{method}" / "{run}.{split}.log",
    benchmark:
        BENCHMARKS / "evaluate" / "{method}" / "{run}.{split}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "subspace-fsl evaluate --run {params.run} --split {wildcards.split}"
        " {params.settings} {params.runtime} --set runtime.threads={threads}"
        " --checkpoint {input.best} --split-file {input.split} --cache {input.cache}"
        " --out {params.out} > {log} 2>&1"


rule select:
    input:
        eval_files("val"),
    output:
        paths.selection_path(config),
    params:
        settings=CONFIG_ARGS,
    log:
        LOGS / "select.log",
    resources:
        mem_mb=2000,
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "subspace-fsl select {params.settings} > {log} 2>&1"
