# medsynth: controllable, pathology-aware CT/MRI synthesis, from raw scans to the papers' tables.
# Embedded study:  snakemake --cores 2
# Paper study:     snakemake --profile profiles/slurm --configfile config/studies/<paper>.yaml

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/weights.smk"
include: "rules/preprocess.smk"
include: "rules/masks.smk"
include: "rules/vae.smk"
include: "rules/generator.smk"
include: "rules/sample.smk"
include: "rules/downstream.smk"
include: "rules/metrics.smk"
include: "rules/volumes.smk"
include: "rules/tables.smk"
include: "rules/report.smk"
include: "rules/readers.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
