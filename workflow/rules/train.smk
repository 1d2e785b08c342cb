# One training job per grid cell and seed, and per baseline: all on the same episode seeds;
# with train.init: pretrained, each starts from the pretrain stage's backbone (one job per
# data set and backbone, shared by the whole grid); with train.backbone: frozen, that backbone
# embeds every cached image once (rule embed) and the runs train their heads on the stored
# features (no cache input: the feature file is all they read).


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


rule embed:
    input:
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
        backbone=paths.pretrained_backbone(config),
    output:
        paths.features_path(config),
    log:
        LOGS / "embed.log",
    benchmark:
        BENCHMARKS / "embed.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        settings=snakemake_job.pretrain_settings(config),
        flipped=fsl_protocol.needs_flipped(config),
        runtime=runtime_settings,
    message:
        f"embed every image of {DATASET} with the pre-trained {config['model']['backbone']}"
    script:
        "../scripts/embed.py"


rule train:
    input:
        cache=cache_input,
        features=features_input,
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
