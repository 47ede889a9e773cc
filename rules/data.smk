# Stage 1 of the DAG: download -> discover cases -> ingest (canonical NIfTI, QC) -> manifest.


rule download:
    """Fetch one dataset (or verify the shipped/local files) and inventory its files with sha256."""
    output:
        inventory=f"{RESULTS}/raw/{{dataset}}/inventory.csv",
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **rule_resources("download", mem_mb=2000, runtime=720),
    params:
        entry=dataset_entry,
        download=config["download"],
        raw_dir=lambda wildcards, output: os.path.dirname(
            os.path.dirname(output.inventory)
        ),
        base_dir=BASEDIR,
    script:
        "../scripts/download.py"


checkpoint discover_cases:
    """One row per case (volume file or DICOM series) of every dataset of the study."""
    input:
        inventories=expand(f"{RESULTS}/raw/{{dataset}}/inventory.csv", dataset=DATASETS),
    output:
        sources=f"{RESULTS}/sources.csv",
    log:
        f"{RESULTS}/logs/discover_cases.log",
    conda:
        "../envs/data.yaml"
    resources:
        **rule_resources("discover_cases"),
    params:
        entries=list(DATASETS.values()),
        raw_dir=lambda wildcards, input: os.path.dirname(
            os.path.dirname(input.inventories[0])
        ),
        base_dir=BASEDIR,
    script:
        "../scripts/discover_cases.py"


rule ingest:
    """Convert one shard of cases to canonical RAS NIfTI (HU for CT) and quality-check them."""
    input:
        sources=f"{RESULTS}/sources.csv",
    output:
        shard=directory(f"{RESULTS}/ingest/shard-{{shard}}"),
    log:
        f"{RESULTS}/logs/ingest/shard-{{shard}}.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **rule_resources("ingest", mem_mb=4000),
    params:
        shard_size=config["shard_size"],
        ingest=config["ingest"],
    script:
        "../scripts/ingest.py"


rule manifest:
    """The study's case index with patient-level splits, and the quarantine table."""
    input:
        shards=ingest_shards,
    output:
        manifest=f"{RESULTS}/manifest.csv",
        quarantine=f"{RESULTS}/qc/ingest_quarantine.csv",
    log:
        f"{RESULTS}/logs/manifest.log",
    conda:
        "../envs/data.yaml"
    resources:
        **rule_resources("manifest"),
    params:
        splits=config["splits"],
        seed=config["seed"],
    script:
        "../scripts/manifest.py"
