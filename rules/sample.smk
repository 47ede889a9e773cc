# Stage 5: sampling. One job = one trained model x one sampler run x one condition set (ViCTr Sec. 3.2,
# MAISI-v2): Euler / Heun / Dormand-Prince on the learned field, the Tweedie few-step sampler, DDPM /
# DDIM for noise-prediction models; classifier-free guidance; NFE and seconds recorded per run.


rule sample:
    """Generate one slice per real condition (mask + prompt) of a condition set, decode with the VAE."""
    input:
        unpack(model_inputs),
        shards=slice_shards,
        vae=f"{RESULTS}/vae/final",
        stats=f"{RESULTS}/vae/latent_stats.json",
        weights=weights_of("generator", "architectures"),
    output:
        tensors=f"{RESULTS}/samples/{{model}}/{{run}}/{{conditions}}.safetensors",
        index=f"{RESULTS}/samples/{{model}}/{{run}}/{{conditions}}.csv",
        summary=f"{RESULTS}/samples/{{model}}/{{run}}/{{conditions}}.json",
    log:
        f"{RESULTS}/logs/sample/{{model}}/{{run}}/{{conditions}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample/{{model}}/{{run}}/{{conditions}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("sample", mem_mb=3000, gpu=0),
    params:
        generator=lambda wc: model_generator(wc.model),
        model_cfg=lambda wc: model_config(wc.model),
        sampling=lambda wc: model_sampling(wc.model),
        select=lambda wc: condition_select(wc.model, wc.conditions),
    script:
        "../scripts/sample.py"
