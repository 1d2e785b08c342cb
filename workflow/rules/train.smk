# One training job per grid cell and seed, and per baseline: all on the same episode seeds.


rule train:
    input:
        cache=paths.cache_dir(config),
        split=paths.split_path(config),
        # read when a job starts (the parent run's id); ancient: a new parent for a changed
        # grid must not re-train the runs it keeps
        tracking=ancient(paths.tracking_marker(config)),
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
        runtime=runtime_settings,
        run_dir=lambda wildcards: paths.run_dir(config, wildcards.method, wildcards.run),
    message:
        "train {wildcards.method}/{wildcards.run}"
    script:
        "../scripts/train.py"
