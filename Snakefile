# subspace-fsl benchmark: data -> class split -> one training job per grid cell -> evaluation on
# the validation and novel classes -> lambda selection on validation -> tables -> plots.
# Settings: config.yaml (the full CUB benchmark), validated against workflow/schemas/; every
# default lives in that schema. Demo: `snakemake --profile profiles/demo`.
from snakemake.utils import min_version, validate

from subspace_fsl import config as settings

min_version("9.0")


configfile: "config.yaml"


# Snakemake read the config files with YAML 1.1, the jobs read settings with YAML 1.2: refuse a
# file the two read differently (shot: 010). Then the schema (Snakemake's messages), and the
# package's own rules on top (finite numbers only), which every job applies too.
settings.check_same_reading(workflow.configfiles)
validate(config, "workflow/schemas/config.schema.yaml")
config.update(settings.validate(config, source=" + ".join(map(str, workflow.configfiles))))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/explain.smk"


# Every model and evaluation is a target too: Snakemake (>= 7.7) does not rebuild a deleted
# intermediate file while the files made from it are present, so a deleted model is retrained
# (and only what depends on it re-run) because `all` asks for it.
rule all:
    default_target: True
    input:
        model_files(),
        eval_files("val", "summary.json"),
        eval_files("novel", "summary.json"),
        fsl_targets.eval_files(config),
        paths.selection_path(config),
        table_files(),
        plot_files(),
        fsl_explain.output_files(config),
        fsl_pages.page_files(config),
