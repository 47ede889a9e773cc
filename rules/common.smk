# Everything computed from config and the case tables: paths, datasets, shards, targets.
# Rules never parse config inline; they call what is defined here.

import os

import pandas as pd
from snakemake.exceptions import WorkflowError

from medsynth.data.manifest import shard_ids as _shard_ids
from medsynth.data.registry import load_registry, resolve_datasets
from medsynth.fsutil import OutputFolderError, check_output_folder
from medsynth.study import Study
from medsynth.weights.refs import resolve_pretrained
from medsynth.weights.registry import load_models, model_entry
from medsynth.tables.registry import (
    HEADLINE_TABLES,
    built_tables,
    table_input_files,
    table_names,
    table_params,
)

# relative dataset roots and the registry are resolved against the workflow folder
BASEDIR = workflow.basedir
REGISTRY = os.path.join(BASEDIR, config["registry"])
DATASETS = resolve_datasets(config["datasets"], load_registry(REGISTRY))
# pretrained networks (config/models.yaml), fetched by the weights rule into WEIGHTS (shared by studies)
MODEL_REGISTRY = load_models(os.path.join(BASEDIR, config["model_registry"]))
WEIGHTS = config["weights_dir"].rstrip("/")
# `pretrained: <registry model>` values become that model's local folder; section -> models it uses
PRETRAINED = resolve_pretrained(config, MODEL_REGISTRY, WEIGHTS, BASEDIR)
S = Study(config, BASEDIR)  # names, paths and per-model settings (medsynth/study.py)
STUDY = S.name
RESULTS = S.results
# an unwritable, uncreatable or full results folder fails now, naming the path, not in the middle of a job
try:
    check_output_folder(RESULTS, config["min_free_gib"])
except OutputFolderError as err:
    raise WorkflowError(str(err)) from None
# stage-2 variants (named override sets of config `stage2`), those trained by default, the MedSyn2
# architecture ablations (base generators with another backbone), and every generator that can be sampled
VARIANTS = S.variants
DEFAULT_VARIANTS = S.default_variants
ARCHITECTURES = S.architectures
MODELS = S.models
CONDITION_SETS = S.condition_sets
SAMPLING = S.sampling
DEFAULT_RUN = S.default_run
VOLUMES = S.volumes
DOWNSTREAM = S.downstream
METRICS = S.metrics
TABLES = S.tables
EXTRACTOR_SETTING = S.extractor_setting
EXTRACTOR = S.extractor()
# the tables this study can build and those it builds by default (medsynth/tables/registry.py,
# config tables.build); (model, run) pairs of the sample grid
TABLE_NAMES = table_names(S)
BUILT_TABLES = built_tables(S)
GRID_RUNS = S.grid_runs()
LOSS_CURVES = S.loss_curves()


wildcard_constraints:
    **S.wildcard_constraints(DATASETS),
    table="|".join(TABLE_NAMES),
    pretrained="|".join(MODEL_REGISTRY),


def dataset_entry(wildcards):
    """Resolved registry entry of the dataset being fetched."""
    return DATASETS[wildcards.dataset]


def weights_of(*sections):
    """Inventories of the registry models config ``sections`` use; as inputs they are fetched first and reach provenance."""
    names = sorted(
        {name for section in sections for name in PRETRAINED.get(section, [])}
    )
    return [f"{WEIGHTS}/{name}/inventory.csv" for name in names]


def pretrained_entry(wildcards):
    """Model registry entry of the model being fetched, with this study's overrides."""
    return model_entry(
        MODEL_REGISTRY,
        wildcards.pretrained,
        config["pretrained_models"].get(wildcards.pretrained),
    )


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


# Per-model settings and paths: the study object's (aliases that the rules read).
volume_generator_config = S.volume_generator_config
volume_condition_set = S.volume_condition_set
volume_metrics_json = S.volume_metrics_json
tumour_inputs = S.tumour_inputs
architecture_backbone = S.architecture_backbone
model_generator = S.model_generator
architecture_stage = S.architecture_stage
model_config = S.model_config
model_sampling = S.model_sampling
condition_select = S.condition_select
stage2_init = S.stage2_init
metrics_json = S.metrics_json
downstream_json = S.downstream_json
samples = S.samples
train_threads = S.train_threads


def stage2_config(wildcards):
    """Config `stage2` with the overrides of variant ``wildcards.variant`` merged in."""
    return S.stage2_config(wildcards.variant)


def model_inputs(wildcards):
    """Trained weights of ``wildcards.model`` (+ the stage-1 model a LoRA variant adapts)."""
    return S.model_inputs(wildcards.model)


def downstream_inputs(wildcards):
    """Synthetic slices (and the extractor) a downstream setting needs."""
    return S.downstream_inputs(wildcards.setting)


def table_inputs(wildcards):
    """The named input files of table ``wildcards.table`` (its registry entry's)."""
    return table_input_files(wildcards.table, S)


def table_settings(wildcards):
    """What the builder of table ``wildcards.table`` reads beside its inputs."""
    return table_params(wildcards.table, S)


# the edit figures (config figures.counterfactual / figures.progressive; ViCTr Fig. 3 / 8, MedSyn2 Fig. 5)
EDIT_FIGURES = {
    name: config["figures"][key]
    for name, key in (
        ("counterfactual_grid", "counterfactual"),
        ("progressive_grid", "progressive"),
    )
}


def edit_figure_inputs(name):
    """Input function of an edit figure: the trained weights of its model."""
    return lambda wildcards: S.model_inputs(EDIT_FIGURES[name]["model"])


def edit_figure_params(name):
    """What the task of edit figure ``name`` reads beside its inputs (model settings, condition set)."""
    cfg = EDIT_FIGURES[name]
    return {
        "figure": cfg,
        "generator": lambda wc: model_generator(cfg["model"]),
        "model_cfg": lambda wc: model_config(cfg["model"]),
        "sampling": lambda wc: model_sampling(cfg["model"]),
        "select": lambda wc: condition_select(cfg["model"], cfg["conditions"]),
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
        # ViCTr Fig. 7 comes with ViCTr Table 3 (the same downstream settings)
        *(
            [f"{RESULTS}/figures/downstream_violins.png"]
            if "victr_table3" in BUILT_TABLES
            else []
        ),
        *[
            f"{RESULTS}/figures/{name}.png"
            for name, cfg in EDIT_FIGURES.items()
            if cfg["enabled"]
        ],
        *expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}", table=BUILT_TABLES, ext=["csv", "md"]
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
        f"{RESULTS}/readers/kit",  # the reader-study kit (rules/readers.smk); its key kept apart
        f"{RESULTS}/readers/key.csv",
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
