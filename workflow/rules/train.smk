# One training job per grid cell and seed, and per baseline: all on the same episode seeds;
# with train.init: pretrained, each starts from the pretrain stage's backbone (one job per
# data set and backbone, shared by the whole grid).


rule pretrain:
    input:
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
    output:
        backbone=paths.pretrained_backbone(config),
        done=paths.pretrain_dir(config) / "done",
    log:
        LOGS / "pretrain.log",
    benchmark:
        BENCHMARKS / "pretrain.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=720,
    params:
        settings=snakemake_job.pretrain_settings(config),
        runtime=runtime_settings,
        out_dir=paths.pretrain_dir(config),
    message:
        f"pretrain {config['model']['backbone']} on the base classes of {DATASET}"
    script:
        "../scripts/pretrain.py"


rule train:
    input:
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
        pretrained=pretrained_input,
    output:
        best=RUN_DIR / "best.pt",
        history=RUN_DIR / "history.csv",
        done=RUN_DIR / "done",
    log:
        LOGS / "train" / "{method}" / "{run}.log",
    benchmark:
        BENCHMARKS / "train" / "{method}" / "{run}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=720,
    params:
        settings=run_settings,
        evaluation=evaluation_only,
        runtime=runtime_settings,
        run_dir=lambda wildcards: paths.run_dir(config, wildcards.method, wildcards.run),
    message:
        "train {wildcards.method}/{wildcards.run}"
    script:
        "../scripts/train.py"
