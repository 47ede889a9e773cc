# Stage 7: downstream segmentation (ViCTr Table 3, MedSyn2 Table 5, MAISI-v2 downstream). One MONAI
# segmenter per setting: real, real + augmentation, real + synthetic of a model, synthetic only;
# scored on the real test slices (mDSC, mHD95); a task's pretrained reference segmenters scored off the shelf
# on the same test slices (MedSyn2 Table 5's MedPSeg row).


rule downstream:
    """Train the segmenter of one setting and score it on the real test slices."""
    input:
        unpack(downstream_inputs),
        shards=slice_shards,
        weights=weights_of("downstream"),
    output:
        final=directory(f"{RESULTS}/downstream/{{setting}}/segmenter"),
        evaluation=f"{RESULTS}/downstream/{{setting}}/evaluation.json",
        curve=f"{RESULTS}/downstream/{{setting}}/loss_curve.csv",
        train_config=f"{RESULTS}/downstream/{{setting}}/train_config.json",
    log:
        f"{RESULTS}/logs/downstream/{{setting}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/downstream/{{setting}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("downstream")
    resources:
        **rule_resources("downstream", mem_mb=3000, gpu=0),
    params:
        downstream=DOWNSTREAM,
        grid=config["preprocess"]["grid"],
        statistics=config["statistics"],
        intensity=config["intensity"],
        slice_size=config["trainsets"]["slices"]["size"],
    script:
        "../scripts/downstream.py"


rule downstream_reference:
    """Score a pretrained segmenter (a task's reference row) on the task's real test slices."""
    input:
        shards=slice_shards,
        weights=weights_of("masks"),
    output:
        evaluation=f"{RESULTS}/downstream_reference/{{downstream_task}}/{{reference}}.json",
    log:
        f"{RESULTS}/logs/downstream_reference/{{downstream_task}}/{{reference}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/downstream_reference/{{downstream_task}}/{{reference}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        **rule_resources("downstream_reference", mem_mb=3000, gpu=0),
    params:
        downstream=DOWNSTREAM,
        masks=config["masks"],
        grid=config["preprocess"]["grid"],
        statistics=config["statistics"],
        intensity=config["intensity"],
        slice_size=config["trainsets"]["slices"]["size"],
    script:
        "../scripts/downstream_reference.py"
