# subspace-fsl benchmark: data -> class split -> one training job per grid cell -> evaluation on
# the validation and novel classes -> lambda selection on validation -> tables -> plots.
# Settings: config.yaml (the full CUB benchmark), validated against workflow/schemas/; every
# default lives in that schema. Demo: `snakemake --profile profiles/demo`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/explain.smk"


# Every model and evaluation is a target too: Snakemake (>= 7.7) does not rebuild a deleted
# intermediate file while the files made from it are present, so a deleted model is retrained
# (and only what depends on it re-run) because `all` asks for it.
rule all:
    input:
        model_files(),
        eval_files("val", "summary.json"),
        eval_files("novel", "summary.json"),
        paths.selection_path(config),
        table_files(),
        plot_files(),
        fsl_explain.output_files(config),
    default_target: True
