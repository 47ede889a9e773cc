# Pretrained networks: one job per model of config/models.yaml, into the weights folder shared by studies.


rule weights:
    """Fetch one pretrained model (or re-verify it) and inventory its files with sha256."""
    output:
        inventory=f"{WEIGHTS}/{{pretrained}}/inventory.csv",
        source=f"{WEIGHTS}/{{pretrained}}/source.json",
    log:
        f"{WEIGHTS}/{{pretrained}}/fetch.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **rule_resources("weights", mem_mb=2000, runtime=720),
    params:
        entry=pretrained_entry,
        download=config["download"],
    script:
        "../scripts/weights.py"
