# train.batch_cells: the runs that share their inputs (subspace_fsl.grid.cell_groups) are one
# job each group, trained together in one process (engine/cells.py). The outputs are every
# cell's own run files (no wildcards, so these rules take precedence over the per-run train
# rule for those files); evaluate, select and the tables read them as before. A run alone in
# its group keeps the train rule. Their evaluations (validation and novel, at the training
# shot) are one job per group and split as well (evaluate_cells_*: one process, the feature
# file or cache opened once), each cell still its own eval folder; eval.shots' other shots
# keep the evaluate_shot rule. A profile's set-resources / set-threads for train_cells (else
# train) and evaluate_cells (else evaluate) apply to every generated rule of that family.


def cell_run_dirs(runs):
    return [paths.run_dir(config, run.method, run.name) for run in runs]


def cell_outputs(runs):
    return [d / name for d in cell_run_dirs(runs) for name in ("best.pt", "history.csv", "done")]


def cell_eval_outputs(runs, split):
    return [
        paths.eval_dir(config, run.method, split, run.name) / name
        for run in runs
        for name in ("episodes.csv", "summary.json")
    ]


def cell_eval_settings(runs):
    return [snakemake_job.evaluation_settings(config, run.method, run.name) for run in runs]


def cell_settings(runs):
    return [snakemake_job.run_settings(config, run.method, run.name) for run in runs]


if config["train"]["batch_cells"]:
    for index, (group, runs) in enumerate(grid.cell_groups(config).items()):
        snakemake_job.inherit_profile_resources(
            workflow.resource_settings, f"train_cells_{index}", ("train_cells", "train")
        )
        for split in ("val", "novel"):
            snakemake_job.inherit_profile_resources(
                workflow.resource_settings,
                f"evaluate_cells_{index}_{split}",
                ("evaluate_cells", "evaluate"),
            )

        rule:
            name:
                f"train_cells_{index}"
            input:
                cache=cache_input,
                features=features_input,
                split=paths.split_path(config),
                pretrained=pretrained_input,
            output:
                cell_outputs(runs),
            log:
                LOGS / "train_cells" / f"{group}.log",
            benchmark:
                BENCHMARKS / "train_cells" / f"{group}.tsv"
            conda:
                "../../envs/pipeline.yaml"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=720,
            params:
                settings=cell_settings(runs)[0],
                cells=cell_settings(runs),
                run_dirs=[str(d) for d in cell_run_dirs(runs)],
                evaluation=evaluation_only,
                runtime=runtime_settings,
            message:
                f"train {len(runs)} cells of {group} together"
            script:
                "../scripts/train_cells.py"

        for split in ("val", "novel"):

            rule:
                name:
                    f"evaluate_cells_{index}_{split}"
                input:
                    best=[d / "best.pt" for d in cell_run_dirs(runs)],
                    cache=cache_input,
                    features=features_input,
                    split=paths.split_path(config),
                output:
                    cell_eval_outputs(runs, split),
                log:
                    LOGS / "evaluate_cells" / f"{group}.{split}.log",
                benchmark:
                    BENCHMARKS / "evaluate_cells" / f"{group}.{split}.tsv"
                conda:
                    "../../envs/pipeline.yaml"
                threads: 1
                resources:
                    mem_mb=4000,
                    runtime=60,
                params:
                    settings=cell_eval_settings(runs)[0],
                    cells=cell_eval_settings(runs),
                    split=split,
                    out_dirs=[
                        str(paths.eval_dir(config, run.method, split, run.name)) for run in runs
                    ],
                    evaluation=evaluation_only,
                    runtime=runtime_settings,
                message:
                    f"evaluate {len(runs)} cells of {group} on {split}"
                script:
                    "../scripts/evaluate_cells.py"
