# Stage 7: downstream segmentation (ViCTr Table 3, MedSyn2 Table 5, MAISI-v2 downstream). One MONAI
# segmenter per setting: real, real + augmentation, real + synthetic of a model, synthetic only;
# scored on the real test slices (mDSC, mHD95).


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
