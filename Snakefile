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


rule all:
    input:
        table_files(),
        plot_files(),
    default_target: True
