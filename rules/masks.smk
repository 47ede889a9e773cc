# Stage 3: pseudo-masks (classical / TotalSegmentator / lungmask / the dataset's labels) -> condition masks + mask QC.


rule masks:
    """Label maps and condition masks of one registered shard; cases failing mask QC are quarantined."""
    input:
        registered=f"{RESULTS}/registered/shard-{{shard}}",
        weights=weights_of("masks"),
    output:
        shard=directory(f"{RESULTS}/masks/shard-{{shard}}"),
    log:
        f"{RESULTS}/logs/masks/shard-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/masks/shard-{{shard}}.tsv"
    conda:
        "../envs/masks.yaml"
    threads: 2
    resources:
        **rule_resources("masks", mem_mb=8000),
    params:
        masks=config["masks"],
    script:
        "../scripts/masks.py"


rule quarantine:
    """One QC table of every case left out, by stage (ingest, registration, masks), with its reason."""
    input:
        ingest=f"{RESULTS}/qc/ingest_quarantine.csv",
        registered=registered_shards,
        masks=masks_shards,
    output:
        table=report(
            f"{RESULTS}/qc/quarantine.csv",
            caption="../report/quarantine.rst",
            category="Quality control",
        ),
    log:
        f"{RESULTS}/logs/quarantine.log",
    conda:
        "../envs/masks.yaml"
    resources:
        **rule_resources("quarantine"),
    script:
        "../scripts/quarantine.py"


rule mask_figure:
    """Condition masks over their registered images for a few cases, for the report."""
    input:
        registered=registered_shards,
        masks=masks_shards,
    output:
        figure=report(
            f"{RESULTS}/figures/mask_overlay.png",
            caption="../report/mask_overlay.rst",
            category="Preprocessing",
        ),
    log:
        f"{RESULTS}/logs/figures/mask_overlay.log",
    conda:
        "../envs/masks.yaml"
    resources:
        **rule_resources("mask_figure"),
    params:
        figures=config["figures"],
        intensity=config["intensity"],
    script:
        "../scripts/mask_figure.py"
