# Stage 4: the generator (ViCTr Sec. 3.3): base model, stage 1 (EWC), stage 2 per variant (LoRA / full).
# Every training rule resumes from its newest checkpoint (checkpoints/ is kept between attempts).


rule base:
    """Base generator: rectified flow in VAE latent space on every training slice, masks + compound prompts."""
    input:
        shards=slice_shards,
        vae=f"{RESULTS}/vae/final",
        stats=f"{RESULTS}/vae/latent_stats.json",
        weights=weights_of("generator"),
    output:
        final=directory(f"{RESULTS}/base/final"),
        curve=f"{RESULTS}/base/loss_curve.csv",
        train_config=f"{RESULTS}/base/train_config.json",
        prompts=f"{RESULTS}/base/prompts.csv",
        slices=f"{RESULTS}/base/slices.csv",
    log:
        f"{RESULTS}/logs/base.log",
    benchmark:
        f"{RESULTS}/benchmarks/base.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("base", mem_mb=4000, gpu=0),
    params:
        generator=config["generator"],
        stage=config["base"],
    script:
        "../scripts/base.py"


rule stage1:
    """ViCTr stage 1: Fisher of the base on its own data selects layers; EWC fine-tuning on the atlas slices."""
    input:
        shards=slice_shards,
        vae=f"{RESULTS}/vae/final",
        stats=f"{RESULTS}/vae/latent_stats.json",
        base=f"{RESULTS}/base/final",
        weights=weights_of("generator"),
    output:
        final=directory(f"{RESULTS}/stage1/final"),
        curve=f"{RESULTS}/stage1/loss_curve.csv",
        train_config=f"{RESULTS}/stage1/train_config.json",
        prompts=f"{RESULTS}/stage1/prompts.csv",
        slices=f"{RESULTS}/stage1/slices.csv",
        selected_layers=f"{RESULTS}/stage1/selected_layers.json",
        ewc=f"{RESULTS}/stage1/ewc.safetensors",
    log:
        f"{RESULTS}/logs/stage1.log",
    benchmark:
        f"{RESULTS}/benchmarks/stage1.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("stage1", mem_mb=4000, gpu=0),
    params:
        generator=config["generator"],
        stage=config["stage1"],
        base_stage=config["base"],
    script:
        "../scripts/stage1.py"


rule stage2:
    """ViCTr stage 2 for one variant of config `variants` (victr: LoRA + Tweedie + consistency; vanilla: full).

    Variants may start from the base model (`init: base`, no_stage1), train on their own samples
    (`reflow`), regress noise (`objective: ddpm`, MAISI-v2's diffusion baseline) or add MAISI-v2's
    region contrastive loss (`contrastive`)."""
    input:
        shards=slice_shards,
        vae=f"{RESULTS}/vae/final",
        stats=f"{RESULTS}/vae/latent_stats.json",
        init=lambda wc: stage2_init(wc.variant),
        ewc=f"{RESULTS}/stage1/ewc.safetensors",
        weights=weights_of("generator"),
    output:
        final=directory(f"{RESULTS}/stage2/{{variant}}/final"),
        curve=f"{RESULTS}/stage2/{{variant}}/loss_curve.csv",
        train_config=f"{RESULTS}/stage2/{{variant}}/train_config.json",
        prompts=f"{RESULTS}/stage2/{{variant}}/prompts.csv",
        slices=f"{RESULTS}/stage2/{{variant}}/slices.csv",
    log:
        f"{RESULTS}/logs/stage2/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/stage2/{{variant}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("stage2", mem_mb=4000, gpu=0),
    params:
        generator=config["generator"],
        stage=stage2_config,
        ddpm=SAMPLING["ddpm"],
    script:
        "../scripts/stage2.py"


rule architecture:
    """MedSyn2 Supp. 7.5 ablations: a generator trained from scratch like the base model (config `base`
    + `architecture_training`) with backbone `architectures.<arch>` (e.g. the MedSyn2 DiT without its
    depthwise convolution or gated attention)."""
    input:
        shards=slice_shards,
        vae=f"{RESULTS}/vae/final",
        stats=f"{RESULTS}/vae/latent_stats.json",
        weights=weights_of("generator", "architectures"),
    output:
        final=directory(f"{RESULTS}/architectures/{{arch}}/final"),
        curve=f"{RESULTS}/architectures/{{arch}}/loss_curve.csv",
        train_config=f"{RESULTS}/architectures/{{arch}}/train_config.json",
        prompts=f"{RESULTS}/architectures/{{arch}}/prompts.csv",
        slices=f"{RESULTS}/architectures/{{arch}}/slices.csv",
    log:
        f"{RESULTS}/logs/architectures/{{arch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/architectures/{{arch}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("architecture", mem_mb=4000, gpu=0),
    params:
        generator=lambda wc: model_generator(wc.arch),
        stage=lambda wc: architecture_stage(wc.arch),
    script:
        "../scripts/architecture.py"
