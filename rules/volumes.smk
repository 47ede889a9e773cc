# The 3D path (MAISI-v2, MedSyn2): a volume VAE, a generator trained on volume latents, volume sampling
# and MAISI's 2.5D / MedSyn2 Table 1 metrics (Frechet distance per CT window x plane XY / YZ / ZX).
# Config `volumes` (enabled: false leaves the study 2D); everything under results/<study>/volumes/.


rule volume_vae:
    """Tune the 3D VAE on the training volumes (+ mask channels); latent statistics; reconstruction table."""
    input:
        shards=volume_shards,
        weights=weights_of("volumes"),
    output:
        final=directory(f"{RESULTS}/volumes/vae/final"),
        stats=f"{RESULTS}/volumes/vae/latent_stats.json",
        curve=f"{RESULTS}/volumes/vae/loss_curve.csv",
        train_config=f"{RESULTS}/volumes/vae/train_config.json",
        reconstruction=f"{RESULTS}/volumes/vae/reconstruction.csv",
    log:
        f"{RESULTS}/logs/volumes/vae.log",
    benchmark:
        f"{RESULTS}/benchmarks/volumes/vae.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("vae")
    resources:
        **rule_resources("volume_vae", mem_mb=6000, gpu=0),
    params:
        vae=VOLUMES["vae"],
        statistics=config["statistics"],
    script:
        "../scripts/volume_vae.py"


rule volume_generator:
    """The 3D generator (MAISI-v2's diffusion UNet + ControlNet, or MedSyn2's 3D DiT) on volume latents,
    rectified flow with masks and compound prompts, trained from scratch like the base model.
    """
    input:
        shards=volume_shards,
        vae=f"{RESULTS}/volumes/vae/final",
        stats=f"{RESULTS}/volumes/vae/latent_stats.json",
        weights=weights_of("volumes"),
    output:
        final=directory(f"{RESULTS}/volumes/generator/final"),
        curve=f"{RESULTS}/volumes/generator/loss_curve.csv",
        train_config=f"{RESULTS}/volumes/generator/train_config.json",
        prompts=f"{RESULTS}/volumes/generator/prompts.csv",
        slices=f"{RESULTS}/volumes/generator/slices.csv",
    log:
        f"{RESULTS}/logs/volumes/generator.log",
    benchmark:
        f"{RESULTS}/benchmarks/volumes/generator.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("volume_generator", mem_mb=6000, gpu=0),
    params:
        generator=volume_generator_config(),
        stage=VOLUMES["training"],
        contrastive=VOLUMES["contrastive"],
    script:
        "../scripts/volume_generator.py"


rule volume_sample:
    """One generated volume per real volume of a condition set (its masks and prompt)."""
    input:
        shards=volume_shards,
        vae=f"{RESULTS}/volumes/vae/final",
        stats=f"{RESULTS}/volumes/vae/latent_stats.json",
        model=f"{RESULTS}/volumes/generator/final",
        weights=weights_of("volumes"),
    output:
        tensors=f"{RESULTS}/volumes/samples/{{run}}/{{conditions}}.safetensors",
        index=f"{RESULTS}/volumes/samples/{{run}}/{{conditions}}.csv",
        summary=f"{RESULTS}/volumes/samples/{{run}}/{{conditions}}.json",
    log:
        f"{RESULTS}/logs/volumes/sample/{{run}}/{{conditions}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/volumes/sample/{{run}}/{{conditions}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("volume_sample", mem_mb=4000, gpu=0),
    params:
        generator=volume_generator_config(),
        model_cfg=VOLUMES["training"],
        sampling={
            **SAMPLING,
            **(VOLUMES.get("sampling") or {}),
            "hu_range": config["intensity"]["ct_hu_range"],
        },
        select=lambda wc: volume_condition_set(wc.conditions),
    script:
        "../scripts/volume_sample.py"


rule volume_metrics:
    """MedSyn2 Table 1 / MAISI 2.5D: FD per CT window x plane (XY, YZ, ZX; central 40 % of the slices),
    through the self-trained 2D extractor; SSIM / PSNR; mask fidelity of re-segmented axial slices.
    """
    input:
        generated=f"{RESULTS}/volumes/samples/{{run}}/eval.safetensors",
        index=f"{RESULTS}/volumes/samples/{{run}}/eval.csv",
        summary=f"{RESULTS}/volumes/samples/{{run}}/eval.json",
        shards=volume_shards,
        extractor=EXTRACTOR,
        weights=weights_of("volumes", "metrics"),
    output:
        f"{RESULTS}/volumes/metrics/{{run}}.json",
    log:
        f"{RESULTS}/logs/volumes/metrics/{{run}}.log",
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        **rule_resources("volume_metrics", mem_mb=4000),
    params:
        metrics={
            **METRICS,
            "extractor_size": [config["trainsets"]["slices"]["size"]] * 2,
        },
        intensity=config["intensity"],
        select=lambda wc: volume_condition_set("eval"),
        grid=config["preprocess"]["grid"],
    script:
        "../scripts/volume_metrics.py"


rule volume_downstream:
    """MAISI-v2's downstream tumour segmentation: a 3D segmenter of one tumour task trained on its real
    training volumes (real) or on them plus generated ones (real_synth), Dice of the ROI on its real test volumes.
    """
    input:
        unpack(lambda wc: tumour_inputs(wc.task, wc.tumour_setting)),
        shards=volume_shards,
    output:
        final=directory(
            f"{RESULTS}/volumes/downstream/{{task}}/{{tumour_setting}}/segmenter"
        ),
        evaluation=f"{RESULTS}/volumes/downstream/{{task}}/{{tumour_setting}}/evaluation.json",
        curve=f"{RESULTS}/volumes/downstream/{{task}}/{{tumour_setting}}/loss_curve.csv",
        train_config=f"{RESULTS}/volumes/downstream/{{task}}/{{tumour_setting}}/train_config.json",
    log:
        f"{RESULTS}/logs/volumes/downstream/{{task}}/{{tumour_setting}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/volumes/downstream/{{task}}/{{tumour_setting}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: VOLUMES["downstream"]["threads"]
    resources:
        **rule_resources("volume_downstream", mem_mb=4000, gpu=0),
    params:
        cfg=VOLUMES["downstream"],
        task_cfg=lambda wc: VOLUMES["downstream"]["tasks"][wc.task],
        setting=lambda wc: wc.tumour_setting,
        statistics=config["statistics"],
    script:
        "../scripts/volume_downstream.py"
