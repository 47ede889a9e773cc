# Stage 8: the papers' tables. One rule and one CSV + Markdown file per table; asking for one table
# file runs exactly what that table needs. Published values come from config/paper_reported.


rule victr_table2:
    """ViCTr Table 2: FID / MFID of vanilla fine-tuning vs ViCTr, sampling steps and seconds."""
    input:
        vanilla=metrics_json("vanilla"),
        victr=metrics_json("victr"),
    output:
        csv=report(
            f"{RESULTS}/tables/victr_table2.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "victr_table2", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/victr_table2.md",
    log:
        f"{RESULTS}/logs/tables/victr_table2.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="victr_table2",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule victr_table3:
    """ViCTr Table 3: downstream segmentation (mDSC, mHD95) per training setting."""
    input:
        **{s: downstream_json(s) for s in DOWNSTREAM.get("settings", [])},
    output:
        csv=report(
            f"{RESULTS}/tables/victr_table3.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "victr_table3", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/victr_table3.md",
    log:
        f"{RESULTS}/logs/tables/victr_table3.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="victr_table3",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule victr_table4:
    """ViCTr Table 4: ablations (Tweedie, loss terms, LoRA rank, ...) - FD of each variant."""
    input:
        **{
            row["model"]: metrics_json(row["model"], row.get("run"))
            for row in TABLES.get("victr_t4", [])
        },
    output:
        csv=report(
            f"{RESULTS}/tables/victr_table4.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "victr_table4", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/victr_table4.md",
    log:
        f"{RESULTS}/logs/tables/victr_table4.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="victr_table4",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule medsyn2_table1:
    """MedSyn2 Table 1: FD per CT window of the ViCTr model's slices and, for a 3D study, per window x
    plane (XY, YZ, ZX) of the volume generator."""
    input:
        **volume_metrics_json(),
        victr=metrics_json("victr"),
    output:
        csv=report(
            f"{RESULTS}/tables/medsyn2_table1.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "medsyn2_table1", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/medsyn2_table1.md",
    log:
        f"{RESULTS}/logs/tables/medsyn2_table1.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="medsyn2_table1",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule medsyn2_table5:
    """MedSyn2 Table 5: segmentation trained on real, synthesized and combined data."""
    input:
        **{
            s: downstream_json(s)
            for s in DOWNSTREAM.get("settings", [])
            if s.split("-")[0] in ("real", "real_synth", "synth_only")
        },
    output:
        csv=report(
            f"{RESULTS}/tables/medsyn2_table5.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "medsyn2_table5", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/medsyn2_table5.md",
    log:
        f"{RESULTS}/logs/tables/medsyn2_table5.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="medsyn2_table5",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule medsyn2_table6:
    """MedSyn2 Table 6: masks reconstructed through the VAE (tokenizer)."""
    input:
        reconstruction=f"{RESULTS}/vae/reconstruction.csv",
    output:
        csv=report(
            f"{RESULTS}/tables/medsyn2_table6.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "medsyn2_table6", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/medsyn2_table6.md",
    log:
        f"{RESULTS}/logs/tables/medsyn2_table6.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="medsyn2_table6",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule medsyn2_table7:
    """MedSyn2 Table 7: masks re-segmented from generated images vs the conditioning masks."""
    input:
        victr=metrics_json("victr"),
        reconstruction=f"{RESULTS}/vae/reconstruction.csv",
    output:
        csv=report(
            f"{RESULTS}/tables/medsyn2_table7.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "medsyn2_table7", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/medsyn2_table7.md",
    log:
        f"{RESULTS}/logs/tables/medsyn2_table7.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="medsyn2_table7",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule maisi_steps:
    """MAISI-v2 steps ablation: FD vs sampler steps and NFE (the FD-vs-NFE sweep)."""
    input:
        **{
            run: metrics_json(SAMPLING.get("steps_model", "victr"), run)
            for run in SAMPLING.get("steps_runs", [])
        },
    output:
        csv=report(
            f"{RESULTS}/tables/maisi_steps.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "maisi_steps", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/maisi_steps.md",
    log:
        f"{RESULTS}/logs/tables/maisi_steps.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="maisi_steps",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule maisi_main:
    """MAISI-v2 main results: method x steps x seconds x FD, with the paper's rows."""
    input:
        **{
            f"{r['model']}/{r['run']}": metrics_json(r["model"], r["run"])
            for r in TABLES.get("maisi_main", [])
        },
    output:
        csv=report(
            f"{RESULTS}/tables/maisi_main.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "maisi_main", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/maisi_main.md",
    log:
        f"{RESULTS}/logs/tables/maisi_main.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="maisi_main",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        backbone=config["generator"]["backbone"]["type"],
        downstream_name=DOWNSTREAM.get("name", "UNet"),
    script:
        "../scripts/table.py"


rule maisi_contrastive:
    """MAISI-v2 region-specific contrastive loss off (victr) vs on (contrastive): FD, ROI fidelity, control."""
    input:
        off=metrics_json(TABLES.get("contrastive_off", "victr")),
        on=metrics_json(TABLES.get("contrastive_on", "contrastive")),
    output:
        csv=report(
            f"{RESULTS}/tables/maisi_contrastive.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "maisi_contrastive", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/maisi_contrastive.md",
    log:
        f"{RESULTS}/logs/tables/maisi_contrastive.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="maisi_contrastive",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        contrastive_roi=lambda wc: (
            model_config(TABLES.get("contrastive_on", "contrastive")).get(
                "contrastive"
            )
            or {}
        ).get("roi", "liver"),
    script:
        "../scripts/table.py"


rule maisi_hu_qc:
    """MAISI HU quality check: pass rates of the default run of each model of config `tables.hu_qc_models`."""
    input:
        **{m: metrics_json(m) for m in TABLES.get("hu_qc_models", ["victr"])},
    output:
        csv=report(
            f"{RESULTS}/tables/maisi_hu_qc.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "maisi_hu_qc", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/maisi_hu_qc.md",
    log:
        f"{RESULTS}/logs/tables/maisi_hu_qc.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="maisi_hu_qc",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
    script:
        "../scripts/table.py"


rule meddiff_ft:
    """MedDiff-FT: downstream Dice with synthetic data from the guiding mask and the stochastic mask generator, with / without the filter."""
    input:
        **{
            s: downstream_json(s)
            for s in DOWNSTREAM.get("settings", [])
            if s.split("-")[0] in ("real_synth_mg", "real_synth_mgf", "real_synth_gm")
            or s == f"real_synth-{TABLES.get('meddiff_model', 'victr')}"
        },
        real=downstream_json("real"),
    output:
        csv=report(
            f"{RESULTS}/tables/meddiff_ft.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "meddiff_ft", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/meddiff_ft.md",
    log:
        f"{RESULTS}/logs/tables/meddiff_ft.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="meddiff_ft",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
    script:
        "../scripts/table.py"


rule medsyn2_ablation:
    """MedSyn2 Supp. 7.5: the DiT with / without its depthwise convolution and gated attention."""
    input:
        **{arch: metrics_json(arch) for arch in ARCHITECTURES},
    output:
        csv=report(
            f"{RESULTS}/tables/medsyn2_ablation.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "medsyn2_ablation", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/medsyn2_ablation.md",
    log:
        f"{RESULTS}/logs/tables/medsyn2_ablation.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="medsyn2_ablation",
        tables=TABLES,
        paper_dir=os.path.join(
            BASEDIR, TABLES.get("paper_reported", "config/paper_reported")
        ),
        architectures={arch: architecture_backbone(arch) for arch in ARCHITECTURES},
    script:
        "../scripts/table.py"
