# Stage 6: metrics of one sampling run on the `eval` condition set against the real slices it was
# conditioned on: FID/KID (InceptionV3, when its weights exist), Frechet distance on the self-trained
# encoder, per-window FD, SSIM/PSNR of the pairs, mask fidelity by re-segmentation, controllability.


rule metrics:
    """Every metric of one model x sampling run (one JSON file)."""
    input:
        generated=samples("{model}", "{run}", "eval"),
        index=samples("{model}", "{run}", "eval", "csv"),
        summary=samples("{model}", "{run}", "eval", "json"),
        shards=slice_shards,
        extractor=EXTRACTOR,
        weights=weights_of("metrics"),
    output:
        f"{RESULTS}/metrics/{{model}}/{{run}}.json",
    log:
        f"{RESULTS}/logs/metrics/{{model}}/{{run}}.log",
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        **rule_resources("metrics", mem_mb=3000),
    params:
        metrics=METRICS,
        intensity=config["intensity"],
        select=SAMPLING["condition_sets"]["eval"],
        severity=config["generator"].get("severity"),
        severity_prompt=lambda wc: bool(
            model_config(wc.model).get("severity_prompt", False)
        ),
        grid=config["preprocess"]["grid"],
        statistics=config["statistics"],
        slice_size=config["trainsets"]["slices"]["size"],
    script:
        "../scripts/metrics.py"
