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
        select=lambda wc: condition_select(wc.model, "eval"),
        severity=config["generator"]["severity"],
        severity_prompt=lambda wc: bool(model_config(wc.model)["severity_prompt"]),
        grid=config["preprocess"]["grid"],
        statistics=config["statistics"],
        slice_size=config["trainsets"]["slices"]["size"],
    script:
        "../scripts/metrics.py"


rule calibration:
    """Reference rows on the held-out slices: real training slices, VAE reconstructions, degraded copies."""
    input:
        shards=slice_shards,
        extractor=EXTRACTOR,
        vae=f"{RESULTS}/vae/final",
    output:
        f"{RESULTS}/metrics/calibration.json",
    log:
        f"{RESULTS}/logs/metrics/calibration.log",
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        **rule_resources("metrics", mem_mb=3000),
    params:
        metrics=METRICS,
        select=SAMPLING["condition_sets"]["eval"],
        statistics=config["statistics"],
        grid=config["preprocess"]["grid"],
        slice_size=config["trainsets"]["slices"]["size"],
    script:
        "../scripts/calibration.py"
