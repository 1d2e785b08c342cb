# Raw data (synthesised here; CUB is downloaded and extracted by `prepare`) -> image cache ->
# base / validation / novel class split -> MLflow store and experiment.


if config["dataset"]["source"] == "synthetic":

    rule synthesise:
        output:
            directory(paths.raw_root(config)),
        params:
            settings=data_args("dataset"),
        log:
            LOGS / "synthesise.log",
        threads: 2
        resources:
            mem_mb=2000,
        conda:
            "../../envs/pipeline.yaml"
        shell:
            "subspace-fsl synth {params.settings} --out {output} --workers {threads} > {log} 2>&1"


rule prepare:
    input:
        paths.raw_root(config) if config["dataset"]["source"] == "synthetic" else [],
    output:
        directory(paths.cache_dir(config)),
    params:
        settings=data_args("dataset"),
        runtime=RUNTIME_ARGS,
    log:
        LOGS / "prepare.log",
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "subspace-fsl prepare {params.settings} {params.runtime} --workers {threads} > {log} 2>&1"


rule split:
    input:
        paths.cache_dir(config),
    output:
        paths.split_path(config),
    params:
        settings=data_args("dataset", "split"),
    log:
        LOGS / "split.log",
    resources:
        mem_mb=1000,
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "subspace-fsl split {params.settings} --cache {input} --out {output} > {log} 2>&1"


rule init_tracking:
    output:
        paths.tracking_marker(config),
    params:
        settings=data_args("dataset"),
        runtime=RUNTIME_ARGS,
    log:
        LOGS / "init_tracking.log",
    localrule: True
    resources:
        mem_mb=1000,
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "subspace-fsl init-tracking {params.settings} {params.runtime} --out {output} > {log} 2>&1"
