# Stage 9: figures of the evaluation and the report (`snakemake --report`): sample grids, the FD-vs-NFE
# curve, loss curves, the downstream violins (ViCTr Fig. 7), the edit figures (counterfactuals, progressive conditions), registration and mask overlays, the QC table and every paper table.


rule sample_grid:
    """Mask | real | generated (per model and sampler) for a few held-out conditions."""
    input:
        **{f"{m} {r}": samples(m, r, "eval") for m, r in GRID_RUNS},
        shards=slice_shards,
    output:
        report(
            f"{RESULTS}/figures/sample_grid.png",
            caption="../report/sample_grid.rst",
            category="Samples",
        ),
    log:
        f"{RESULTS}/logs/figures/sample_grid.log",
    conda:
        "../envs/train.yaml"
    params:
        labels=[f"{m} {r}" for m, r in GRID_RUNS],
        select=S.grid_select(),
        intensity=config["intensity"],
        window=config["figures"]["ct_window"],
        n_conditions=config["figures"]["cases"],
    script:
        "../scripts/sample_grid.py"


rule counterfactual_grid:
    """Real slices beside their SDEdit counterfactuals at each severity (ViCTr Fig. 3 / 8)."""
    input:
        unpack(edit_figure_inputs("counterfactual_grid")),
        shards=slice_shards,
        vae=f"{RESULTS}/vae/final",
        stats=f"{RESULTS}/vae/latent_stats.json",
        weights=weights_of("generator", "architectures"),
    output:
        report(
            f"{RESULTS}/figures/counterfactual_grid.png",
            caption="../report/counterfactual_grid.rst",
            category="Samples",
        ),
    log:
        f"{RESULTS}/logs/figures/counterfactual_grid.log",
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("counterfactual_grid", mem_mb=3000, gpu=0),
    params:
        **edit_figure_params("counterfactual_grid"),
        intensity=config["intensity"],
        window=config["figures"]["ct_window"],
        n_conditions=config["figures"]["cases"],
    script:
        "../scripts/counterfactual_grid.py"


rule progressive_grid:
    """Conditions added stage by stage, each stage SDEdit-re-noised from the last (MedSyn2 Fig. 5)."""
    input:
        unpack(edit_figure_inputs("progressive_grid")),
        shards=slice_shards,
        vae=f"{RESULTS}/vae/final",
        stats=f"{RESULTS}/vae/latent_stats.json",
        weights=weights_of("generator", "architectures"),
    output:
        report(
            f"{RESULTS}/figures/progressive_grid.png",
            caption="../report/progressive_grid.rst",
            category="Samples",
        ),
    log:
        f"{RESULTS}/logs/figures/progressive_grid.log",
    conda:
        "../envs/train.yaml"
    threads: train_threads("generator")
    resources:
        **rule_resources("progressive_grid", mem_mb=3000, gpu=0),
    params:
        **edit_figure_params("progressive_grid"),
        intensity=config["intensity"],
        window=config["figures"]["ct_window"],
        n_conditions=config["figures"]["cases"],
    script:
        "../scripts/progressive_grid.py"


rule fd_vs_nfe:
    """Frechet distance against NFE for every run of the steps sweep."""
    input:
        [metrics_json(SAMPLING["steps_model"], run) for run in SAMPLING["steps_runs"]],
    output:
        report(
            f"{RESULTS}/figures/fd_vs_nfe.png",
            caption="../report/fd_vs_nfe.rst",
            category="Samples",
        ),
    log:
        f"{RESULTS}/logs/figures/fd_vs_nfe.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/fd_vs_nfe.py"


rule loss_curves:
    """Loss curves of every trained stage (VAE, base, stage 1, stage-2 variants, downstream real)."""
    input:
        **LOSS_CURVES,
    output:
        report(
            f"{RESULTS}/figures/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="Training",
        ),
    log:
        f"{RESULTS}/logs/figures/loss_curves.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/loss_curves.py"


rule downstream_violins:
    """Per-slice Dice of each downstream setting per structure (ViCTr Fig. 7)."""
    input:
        **{setting: S.downstream_json(setting) for setting in S.downstream_settings()},
    output:
        report(
            f"{RESULTS}/figures/downstream_violins.png",
            caption="../report/downstream_violins.rst",
            category="Downstream",
        ),
    log:
        f"{RESULTS}/logs/figures/downstream_violins.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/downstream_violins.py"


rule report_inputs:
    """Everything the report shows (the target the report rule hands to `snakemake --report`)."""
    input:
        report_inputs(),


rule report:
    """`snakemake --report` over report_inputs: captions and categories from the rules' report() flags."""
    input:
        report_inputs(),
    output:
        f"{RESULTS}/report.html",
    log:
        f"{RESULTS}/logs/report.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        python=sys.executable,
        snakefile=workflow.main_snakefile,
        configfiles=" ".join(
            f"--configfile {f}" for f in workflow.overwrite_configfiles
        ),
    shell:
        "{params.python} -m snakemake --snakefile {params.snakefile} {params.configfiles} --nolock"
        " --report {output} report_inputs > {log} 2>&1"
