# Raw data (synthesised here; real sets are downloaded and extracted by `prepare`) -> image cache ->
# base / validation / novel class split -> MLflow store and experiment.
from subspace_fsl.data.splits import list_files as split_list_files

if config["dataset"]["source"] == "synthetic":

    rule synthesise:
        output:
            directory(paths.raw_root(config)),
        log:
            LOGS / "synthesise.log",
        conda:
            "../../envs/pipeline.yaml"
        threads: 2
        resources:
            mem_mb=2000,
        params:
            settings=stage_settings("synthesise"),
            runtime=runtime_settings,
        message:
            f"synthesise the {DATASET} data set"
        script:
            "../scripts/synthesise.py"


rule prepare:
    input:
        paths.raw_root(config) if config["dataset"]["source"] == "synthetic" else [],
    output:
        directory(paths.cache_dir(config)),
    log:
        LOGS / "prepare.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        settings=stage_settings("prepare"),
        runtime=runtime_settings,
    message:
        f"prepare the image cache of {DATASET}"
    script:
        "../scripts/prepare.py"


rule split:
    input:
        paths.cache_dir(config),
        split_list_files(config["split"]),
    output:
        paths.split_path(config),
    log:
        LOGS / "split.log",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
    params:
        settings=stage_settings("split"),
        runtime=runtime_settings,
    message:
        f"split the classes of {DATASET}"
    script:
        "../scripts/split.py"


rule init_tracking:
    output:
        paths.tracking_marker(config),
    log:
        LOGS / "init_tracking.log",
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
    params:
        settings=GRID_SETTINGS,
        runtime=runtime_settings,
    message:
        f"set up the MLflow store, experiment and benchmark run of {DATASET}"
    script:
        "../scripts/init_tracking.py"


# a cross-domain target's image cache (eval.targets): its own data set, read (or synthesised)
# and decoded at the model's preprocessing, keyed by the target's dataset settings
rule prepare_target:
    output:
        directory(TARGET_CACHE),
    log:
        LOGS / "prepare_target" / "{target}.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        settings=target_prepare_settings,
        runtime=runtime_settings,
    message:
        "prepare the image cache of target {wildcards.target}"
    script:
        "../scripts/prepare_target.py"
