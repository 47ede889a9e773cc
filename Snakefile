# medsynth: controllable, pathology-aware CT/MRI synthesis, from raw scans to the papers' tables.
# Embedded study:  snakemake --cores 2
# Paper study:     snakemake --profile profiles/slurm --configfile config/studies/<paper>.yaml

from snakemake.utils import min_version, validate

from medsynth.configmerge import extended_config

min_version("9.0")


# A study config is merged onto the config it `extends` (default: the embedded study's, so a study of
# your own data inherits the embedded recipe); `extends: null` stands alone (the paper studies), and the
# schema's defaults fill in what it leaves out. One level: the extended file's own `extends` is not read.
# A named file is found relative to the workflow folder (from any --directory); a missing one is an error.
if "extends" not in config:

    configfile: "config/config.yaml"

elif config["extends"]:

    configfile: extended_config(config["extends"], workflow.basedir)


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
