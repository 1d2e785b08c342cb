# Every model on the validation and on the novel classes (eval.episodes episodes, one episode
# seed for all), then lambda1, lambda2 (per way, shot, S) and S chosen on validation only.


rule evaluate:
    input:
        best=RUN_DIR / "best.pt",
        cache=cache_input,
        features=features_input,
        split=paths.split_path(config),
    output:
        episodes=EVAL_DIR / "episodes.csv",
        summary=EVAL_DIR / "summary.json",
    log:
        LOGS / "evaluate" / "{method}" / "{run}.{split}.log",
    benchmark:
        BENCHMARKS / "evaluate" / "{method}" / "{run}.{split}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=evaluation_settings,
        evaluation=evaluation_only,
        runtime=runtime_settings,
        out_dir=lambda wildcards: paths.eval_dir(
            config, wildcards.method, wildcards.split, wildcards.run
        ),
    message:
        "evaluate {wildcards.method}/{wildcards.run} on {wildcards.split}"
    script:
        "../scripts/evaluate.py"


# the novel classes at another shot of eval.shots (eval/novel_shot{k}): its own episode plan
# of that shot, same eval.seed, so every model's k-shot evaluation is on identical episodes
rule evaluate_shot:
    input:
        best=RUN_DIR / "best.pt",
        cache=cache_input,
        features=features_input,
        split=paths.split_path(config),
    output:
        episodes=EVAL_SHOT_DIR / "episodes.csv",
        summary=EVAL_SHOT_DIR / "summary.json",
    log:
        LOGS / "evaluate" / "{method}" / "{run}.{split}_shot{shot}.log",
    benchmark:
        BENCHMARKS / "evaluate" / "{method}" / "{run}.{split}_shot{shot}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=evaluation_settings,
        evaluation=evaluation_only,
        runtime=runtime_settings,
        shot=lambda wildcards: int(wildcards.shot),
        out_dir=lambda wildcards: paths.eval_dir(
            config, wildcards.method, wildcards.split, wildcards.run, int(wildcards.shot)
        ),
    message:
        "evaluate {wildcards.method}/{wildcards.run} on {wildcards.split} {wildcards.shot}-shot"
    script:
        "../scripts/evaluate_shot.py"


# every model on each cross-domain target of eval.targets (eval/target-{target}): the
# target's own fixed episodes; never read by the selection
rule evaluate_target:
    input:
        best=RUN_DIR / "best.pt",
        cache=TARGET_CACHE,
    output:
        episodes=EVAL_TARGET_DIR / "episodes.csv",
        summary=EVAL_TARGET_DIR / "summary.json",
    log:
        LOGS / "evaluate" / "{method}" / "{run}.target-{target}.log",
    benchmark:
        BENCHMARKS / "evaluate" / "{method}" / "{run}.target-{target}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=target_evaluation_settings,
        runtime=runtime_settings,
        out_dir=lambda wildcards: fsl_targets.eval_dir(
            config, wildcards.method, wildcards.run, wildcards.target
        ),
    message:
        "evaluate {wildcards.method}/{wildcards.run} on target {wildcards.target}"
    script:
        "../scripts/evaluate_target.py"


rule select:
    input:
        eval_files("val"),
    output:
        paths.selection_path(config),
    log:
        LOGS / "select.log",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
    params:
        settings=GRID_SETTINGS,
    message:
        f"select lambdas and S of {DATASET} on validation"
    script:
        "../scripts/select.py"
