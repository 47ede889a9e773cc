# Everything computed from config and the case tables: paths, datasets, shards, targets.
# Rules never parse config inline; they call what is defined here.

import os
import sys
import re

import pandas as pd

from medsynth.data.manifest import shard_ids as _shard_ids
from medsynth.data.registry import load_registry, resolve_datasets

STUDY = config["study"]
RESULTS = f"{config['results_dir']}/{STUDY}"
BASEDIR = (
    workflow.basedir
)  # relative dataset roots and the registry are resolved against the workflow folder
REGISTRY = os.path.join(BASEDIR, config["registry"])
DATASETS = resolve_datasets(config["datasets"], load_registry(REGISTRY))


VARIANTS = list(
    config.get("variants") or {}
)  # stage-2 variants: named override sets of config `stage2`
# the variants `snakemake` trains by default; the others are trained when an output asks for them
DEFAULT_VARIANTS = [
    v for v in config.get("default_variants", VARIANTS) if v in VARIANTS
]


# MedSyn2 architecture ablations: base generators trained from scratch with another backbone
ARCHITECTURES = config.get("architectures") or {}
_clash = set(ARCHITECTURES) & {"base", "stage1", *VARIANTS}
if _clash:
    raise ValueError(
        f"config architectures {sorted(_clash)} clash with base / stage1 / variant names"
    )

# generators that can be sampled: the base model, the stage-1 model, every stage-2 variant and architecture
MODELS = ["base", "stage1", *VARIANTS, *ARCHITECTURES]
CONDITION_SETS = list(
    (config.get("sampling") or {}).get("condition_sets") or {"eval": {}, "train": {}}
)
SAMPLING = config.get("sampling") or {}
DEFAULT_RUN = SAMPLING.get("default_run", "euler-30")


wildcard_constraints:
    dataset="|".join(DATASETS),
    shard=r"\d+",
    variant="|".join(re.escape(v) for v in VARIANTS) or "(?!)",
    arch="|".join(re.escape(a) for a in ARCHITECTURES) or "(?!)",
    model="|".join(re.escape(m) for m in MODELS),
    run=r"(euler|heun|tweedie|ddpm|ddim)-\d+|dopri5-auto",
    setting=r"real|real_aug|(real_synth|synth_only|real_synth_mg|real_synth_mgf|real_synth_gm)-("
    + "|".join(re.escape(m) for m in MODELS)
    + ")",
    conditions="|".join(re.escape(c) for c in CONDITION_SETS),


def dataset_entry(wildcards):
    """Resolved registry entry of the dataset being fetched."""
    return DATASETS[wildcards.dataset]


_CASE_COUNTS = (
    {}
)  # (sources table, mtime, size) -> cases: read once per DAG build, not once per job


def shards(wildcards=None):
    """Shard ids of the study (known once the sources table exists; fixed from then on)."""
    path = checkpoints.discover_cases.get().output.sources
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _CASE_COUNTS:
        _CASE_COUNTS[key] = len(pd.read_csv(path, dtype=str, keep_default_na=False))
    return _shard_ids(_CASE_COUNTS[key], config["shard_size"])


def per_shard(pattern):
    """Input function: ``pattern`` (with ``{shard}``) for every shard of the study."""
    return lambda wildcards: expand(pattern, shard=shards())


ingest_shards = per_shard(f"{RESULTS}/ingest/shard-{{shard}}")
registered_shards = per_shard(f"{RESULTS}/registered/shard-{{shard}}")
masks_shards = per_shard(f"{RESULTS}/masks/shard-{{shard}}")


def training_sets(wildcards):
    """Every training-set shard (2D slices and 3D volumes) of the study."""
    return expand(
        f"{RESULTS}/trainsets/{{kind}}/shard-{{shard}}.{{ext}}",
        kind=["slices", "volumes"],
        shard=shards(),
        ext=["safetensors", "csv"],
    )


def slice_shards(wildcards):
    """Every 2D training-set shard (safetensors + index CSV) of the study."""
    return expand(
        f"{RESULTS}/trainsets/slices/shard-{{shard}}.{{ext}}",
        shard=shards(),
        ext=["safetensors", "csv"],
    )


def volume_shards(wildcards):
    """Every 3D training-set shard (safetensors + index CSV) of the study."""
    return expand(
        f"{RESULTS}/trainsets/volumes/shard-{{shard}}.{{ext}}",
        shard=shards(),
        ext=["safetensors", "csv"],
    )


VOLUMES = config.get("volumes") or {}


def volume_generator_config():
    """`generator` section of the 3D generator: the study's, with the keys of `volumes.generator` replaced."""
    return {**config["generator"], **(VOLUMES.get("generator") or {})}


def volume_condition_set(name):
    """`volumes.condition_sets.<name>` (default: the slices' condition set of that name without its
    slice-only options)."""
    own = (VOLUMES.get("condition_sets") or {}).get(name)
    if own is not None:
        return own
    return {
        k: v
        for k, v in SAMPLING["condition_sets"][name].items()
        if k not in ("stochastic_masks", "inpaint")
    }


def volume_metrics_json():
    """Metrics of the 3D generator's default run (MedSyn2 Table 1 rows XY / YZ / ZX), if the study is 3D."""
    if not VOLUMES.get("enabled"):
        return {}
    return {
        "volumes": f"{RESULTS}/volumes/metrics/{VOLUMES.get('run', 'euler-10')}.json"
    }


def stage2_config(wildcards):
    """Config `stage2` with the overrides of variant ``wildcards.variant`` merged in."""
    from medsynth.configmerge import variant_config

    return variant_config(config["stage2"], config["variants"], wildcards.variant)


def architecture_backbone(name):
    """`generator.backbone` of architecture `name`: its entry, deep-merged onto the one it `extends`."""
    from medsynth.configmerge import variant_config

    entry = dict(ARCHITECTURES[name])
    parent = entry.pop("extends", None)
    if parent is None:
        return entry
    if parent not in ARCHITECTURES:
        raise ValueError(
            f"architectures.{name}.extends = {parent!r} is not an architecture"
        )
    return variant_config(architecture_backbone(parent), {name: entry}, name)


def model_generator(model):
    """`generator` section of a model: an architecture's own backbone, else the study's."""
    if model in ARCHITECTURES:
        return {**config["generator"], "backbone": architecture_backbone(model)}
    return config["generator"]


def architecture_stage():
    """Training recipe of the architecture ablations: config `base` with `architecture_training` overrides."""
    return {**config["base"], **(config.get("architecture_training") or {})}


def model_config(model):
    """Config section a model was trained with: `base`, `stage1`, the variant's merged `stage2` or an
    architecture's training recipe."""
    from medsynth.configmerge import variant_config

    if model in ARCHITECTURES:
        return architecture_stage()
    if model in ("base", "stage1"):
        return config[model]
    return variant_config(config["stage2"], config["variants"], model)


def model_sampling(model):
    """`sampling` settings of a model: the section, with the model's own `sampling` overrides (one-step students)."""
    own = model_config(model).get("sampling") or {}
    return {**SAMPLING, **own, "hu_range": config["intensity"]["ct_hu_range"]}


def model_inputs(wildcards):
    """Trained weights of ``wildcards.model`` (+ the stage-1 model a LoRA variant adapts)."""
    if wildcards.model in ("base", "stage1"):
        return {"model": f"{RESULTS}/{wildcards.model}/final"}
    if wildcards.model in ARCHITECTURES:
        return {"model": f"{RESULTS}/architectures/{wildcards.model}/final"}
    inputs = {"model": f"{RESULTS}/stage2/{wildcards.model}/final"}
    if model_config(wildcards.model).get("method", "lora") == "lora":
        inputs["init"] = stage2_init(wildcards.model)
    return inputs


def stage2_init(variant):
    """The model a stage-2 variant starts from (config `stage2.init`: stage1, or base for no_stage1)."""
    init = model_config(variant).get("init", "stage1")
    if init not in ("stage1", "base"):
        raise ValueError(
            f"variant {variant}: stage2.init must be stage1 or base, got {init!r}"
        )
    return f"{RESULTS}/{init}/final"


DOWNSTREAM = config.get("downstream") or {}
METRICS = config.get("metrics") or {}
TABLES = config.get("tables") or {}
EXTRACTOR_SETTING = METRICS.get("extractor_setting", "real")


def downstream_inputs(wildcards):
    """Synthetic slices a downstream setting needs: <kind>-<model> -> that model's default run on `train`
    (MedDiff-FT kinds: on the stochastic-mask condition set - the filter also needs the feature extractor -
    or, for real_synth_gm, on the guiding-mask condition set)."""
    kind, _, model = wildcards.setting.partition("-")
    if not model:
        return {}
    if kind == "real_synth_gm":
        return {
            "synthetic": samples(
                model,
                DEFAULT_RUN,
                (DOWNSTREAM.get("meddiff") or {}).get(
                    "inpaint_condition_set", "train_inpaint"
                ),
            )
        }
    if kind in ("real_synth_mg", "real_synth_mgf"):
        inputs = {
            "synthetic": samples(
                model,
                DEFAULT_RUN,
                (DOWNSTREAM.get("meddiff") or {}).get(
                    "condition_set", "train_stochastic"
                ),
            )
        }
        if kind == "real_synth_mgf":
            inputs["extractor"] = f"{RESULTS}/downstream/{EXTRACTOR_SETTING}/segmenter"
        return inputs
    return {"synthetic": samples(model, DEFAULT_RUN, "train")}


def metrics_json(model, run=None):
    """Metrics file of one sampling run (default: the study's default run)."""
    return f"{RESULTS}/metrics/{model}/{run or DEFAULT_RUN}.json"


def downstream_json(setting):
    """Evaluation file of one downstream setting."""
    return f"{RESULTS}/downstream/{setting}/evaluation.json"


def samples(model, run, conditions, ext="safetensors"):
    """Path of a sampled set."""
    return f"{RESULTS}/samples/{model}/{run}/{conditions}.{ext}"


def train_threads(section):
    """Threads of a training rule (config ``<section>.threads``, default 1)."""
    return int((config.get(section) or {}).get("threads", 1) or 1)


#: one rule per paper table (rules/tables.smk), each writing tables/<name>.csv and .md
TABLE_RULES = [
    "victr_table2",
    "victr_table3",
    "victr_table4",
    "medsyn2_table1",
    "medsyn2_table5",
    "medsyn2_table6",
    "medsyn2_table7",
    *(["medsyn2_ablation"] if ARCHITECTURES else []),
    "maisi_steps",
    "maisi_main",
    "maisi_contrastive",
    "maisi_hu_qc",
    "meddiff_ft",
]


#: (model, run) pairs of the sample grid: each default variant with the default run, then ViCTr's samplers
GRID_RUNS = list(
    dict.fromkeys(
        [(v, DEFAULT_RUN) for v in DEFAULT_VARIANTS]
        + [
            (SAMPLING.get("steps_model", "victr"), r)
            for r in ("tweedie-2", "dopri5-auto")
            if r in SAMPLING.get("steps_runs", [])
        ]
    )
)
LOSS_CURVES = {
    "vae": f"{RESULTS}/vae/loss_curve.csv",
    "base": f"{RESULTS}/base/loss_curve.csv",
    "stage1": f"{RESULTS}/stage1/loss_curve.csv",
    **{f"stage2 {v}": f"{RESULTS}/stage2/{v}/loss_curve.csv" for v in DEFAULT_VARIANTS},
    f"downstream {EXTRACTOR_SETTING}": f"{RESULTS}/downstream/{EXTRACTOR_SETTING}/loss_curve.csv",
}


def report_inputs():
    """Every file the report shows: figures, QC table and paper tables."""
    return [
        f"{RESULTS}/qc/quarantine.csv",
        f"{RESULTS}/figures/registration_overlay.png",
        f"{RESULTS}/figures/mask_overlay.png",
        f"{RESULTS}/figures/sample_grid.png",
        f"{RESULTS}/figures/fd_vs_nfe.png",
        f"{RESULTS}/figures/loss_curves.png",
        *expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}", table=TABLE_RULES, ext=["csv", "md"]
        ),
    ]


def final_outputs():
    """Everything `snakemake` builds by default for the study."""
    return [
        f"{RESULTS}/manifest.csv",
        f"{RESULTS}/qc/quarantine.csv",
        training_sets,
        f"{RESULTS}/figures/registration_overlay.png",
        f"{RESULTS}/figures/mask_overlay.png",
        f"{RESULTS}/vae/final",
        f"{RESULTS}/vae/reconstruction.csv",
        *expand(f"{RESULTS}/stage2/{{variant}}/final", variant=DEFAULT_VARIANTS),
        *report_inputs(),
        f"{RESULTS}/report.html",
    ]


# Resources of every rule (memory, wall time, GPUs, SLURM partition/account), from config `resources`.
RESOURCE_KEYS = (
    "mem_mb",
    "runtime",
    "cpus_per_task",
    "gpu",
    "gpu_model",
    "cpus_per_gpu",
    "slurm_partition",
    "slurm_account",
    "slurm_extra",
)


def _first_set(*values):
    """The first value that is neither None nor an empty string (None if all are)."""
    return next((v for v in values if v is not None and v != ""), None)


def rule_resources(name, **fallback):
    """Resources of the rule ``name``, e.g. ``**rule_resources("register", mem_mb=8000)`` under resources.

    Each key is taken from the first of: config ``resources.<name>`` (the study's override of this
    rule), ``fallback`` (the rule's own needs, written in the rule), config ``resources.default``.
    ``slurm_partition`` and ``slurm_account`` are site settings (never in ``fallback``): unless the
    study config sets them for this rule, they come from the environment, so that one study runs on
    any cluster unedited: MEDSYNTH_GPU_PARTITION (rules asking for a GPU) or MEDSYNTH_SLURM_PARTITION
    (other rules, and GPU rules when no GPU partition is set) and MEDSYNTH_SLURM_ACCOUNT; else from
    ``resources.default`` (gpu_partition, slurm_partition, slurm_account). Unset keys are left out
    (the cluster's defaults apply). Local runs use only mem_mb and gpu (limits given by --resources).
    """
    settings = config.get("resources", {}) or {}
    default = settings.get("default", {}) or {}
    own = settings.get(name, {}) or {}
    res = {}
    for key in RESOURCE_KEYS:
        value = _first_set(own.get(key), fallback.get(key), default.get(key))
        if value is not None:
            res[key] = value
    env = os.environ
    gpu_partition = None
    if res.get("gpu"):
        gpu_partition = _first_set(
            env.get("MEDSYNTH_GPU_PARTITION"), default.get("gpu_partition")
        )
    res["slurm_partition"] = _first_set(
        own.get("slurm_partition"),
        gpu_partition,
        env.get("MEDSYNTH_SLURM_PARTITION"),
        default.get("slurm_partition"),
    )
    res["slurm_account"] = _first_set(
        own.get("slurm_account"),
        env.get("MEDSYNTH_SLURM_ACCOUNT"),
        default.get("slurm_account"),
    )
    bad = set(fallback) - set(RESOURCE_KEYS) | set(fallback) & {
        "slurm_partition",
        "slurm_account",
    }
    if (
        bad
    ):  # partitions and accounts are site settings: config or environment, never written in a rule
        raise ValueError(
            f"rule_resources({name!r}): keys not allowed in a rule: {sorted(bad)}"
        )
    return {k: v for k, v in res.items() if v is not None and v != "" and v != 0}
