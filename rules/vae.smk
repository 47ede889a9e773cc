# Stage 3: the image autoencoder (MedSyn2 Supp. 7.1.1, 7.3): tuning, z-norm statistics, reconstruction metrics.


rule vae:
    """Tune the 2D VAE on the training slices (+ mask channels); latent statistics; reconstruction table."""
    input:
        shards=slice_shards,
        weights=weights_of("vae"),
    output:
        final=directory(f"{RESULTS}/vae/final"),
        stats=f"{RESULTS}/vae/latent_stats.json",
        curve=f"{RESULTS}/vae/loss_curve.csv",
        train_config=f"{RESULTS}/vae/train_config.json",
        reconstruction=f"{RESULTS}/vae/reconstruction.csv",
    log:
        f"{RESULTS}/logs/vae.log",
    benchmark:
        f"{RESULTS}/benchmarks/vae.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("vae")
    resources:
        **rule_resources("vae", mem_mb=4000, gpu=0),
    params:
        vae=config["vae"],
        statistics=config["statistics"],
    script:
        "../scripts/vae.py"
