# Stage 2: study template -> affine registration onto the study grid -> training sets (2D slices, 3D volumes).


rule templates:
    """Per modality: the study grid image (template from file or built from the training split)."""
    input:
        manifest=f"{RESULTS}/manifest.csv",
        shards=ingest_shards,
    output:
        templates=directory(f"{RESULTS}/templates"),
    log:
        f"{RESULTS}/logs/templates.log",
    benchmark:
        f"{RESULTS}/benchmarks/templates.tsv"
    conda:
        "../envs/preprocess.yaml"
    threads: 1
    resources:
        **rule_resources("templates", mem_mb=8000),
    params:
        preprocess=config["preprocess"],
    script:
        "../scripts/templates.py"


rule register:
    """Affine registration of one shard's cases to their modality's template (images, labels, transforms)."""
    input:
        manifest=f"{RESULTS}/manifest.csv",
        shard=f"{RESULTS}/ingest/shard-{{shard}}",
        templates=f"{RESULTS}/templates",
    output:
        shard=directory(f"{RESULTS}/registered/shard-{{shard}}"),
    log:
        f"{RESULTS}/logs/register/shard-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/register/shard-{{shard}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    threads: 1
    resources:
        **rule_resources("register", mem_mb=8000),
    params:
        preprocess=config["preprocess"],
    script:
        "../scripts/register.py"


rule training_sets:
    """2D axial slices and 3D volumes with condition masks and prompt fields, as safetensors shards."""
    input:
        manifest=f"{RESULTS}/manifest.csv",
        registered=f"{RESULTS}/registered/shard-{{shard}}",
        masks=f"{RESULTS}/masks/shard-{{shard}}",
    output:
        slices=f"{RESULTS}/trainsets/slices/shard-{{shard}}.safetensors",
        slices_index=f"{RESULTS}/trainsets/slices/shard-{{shard}}.csv",
        volumes=f"{RESULTS}/trainsets/volumes/shard-{{shard}}.safetensors",
        volumes_index=f"{RESULTS}/trainsets/volumes/shard-{{shard}}.csv",
    log:
        f"{RESULTS}/logs/training_sets/shard-{{shard}}.log",
    conda:
        "../envs/preprocess.yaml"
    threads: 1
    resources:
        **rule_resources("training_sets", mem_mb=4000),
    params:
        intensity=config["intensity"],
        trainsets=config["trainsets"],
    script:
        "../scripts/training_sets.py"


rule registration_figure:
    """Registered cases over their template (axial, coronal, sagittal), for the report."""
    input:
        templates=f"{RESULTS}/templates",
        registered=registered_shards,
    output:
        figure=report(
            f"{RESULTS}/figures/registration_overlay.png",
            caption="../report/registration_overlay.rst",
            category="Preprocessing",
        ),
    log:
        f"{RESULTS}/logs/figures/registration_overlay.log",
    conda:
        "../envs/preprocess.yaml"
    resources:
        **rule_resources("registration_figure"),
    params:
        figures=config["figures"],
        intensity=config["intensity"],
    script:
        "../scripts/registration_figure.py"
