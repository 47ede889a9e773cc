# Everything computed from config and the case tables: paths, datasets, shards, targets.
# Rules never parse config inline; they call what is defined here.

import os

import pandas as pd

from medsynth.data.manifest import shard_ids as _shard_ids
from medsynth.data.registry import load_registry, resolve_datasets

STUDY = config["study"]
RESULTS = f"{config['results_dir']}/{STUDY}"
BASEDIR = workflow.basedir  # relative dataset roots and the registry are resolved against the workflow folder
REGISTRY = os.path.join(BASEDIR, config["registry"])
DATASETS = resolve_datasets(config["datasets"], load_registry(REGISTRY))


wildcard_constraints:
    dataset="|".join(DATASETS),
    shard=r"\d{3}",


def dataset_entry(wildcards):
    """Resolved registry entry of the dataset being fetched."""
    return DATASETS[wildcards.dataset]


def shards(wildcards=None):
    """Shard ids of the study (known once the sources table exists; fixed from then on)."""
    sources = pd.read_csv(checkpoints.discover_cases.get().output.sources, dtype=str, keep_default_na=False)
    return _shard_ids(len(sources), config["shard_size"])


def per_shard(pattern):
    """Input function: ``pattern`` (with ``{shard}``) for every shard of the study."""
    return lambda wildcards: expand(pattern, shard=shards())


ingest_shards = per_shard(f"{RESULTS}/ingest/shard-{{shard}}")
registered_shards = per_shard(f"{RESULTS}/registered/shard-{{shard}}")
masks_shards = per_shard(f"{RESULTS}/masks/shard-{{shard}}")


def training_sets(wildcards):
    """Every training-set shard (2D slices and 3D volumes) of the study."""
    return expand(f"{RESULTS}/trainsets/{{kind}}/shard-{{shard}}.{{ext}}", kind=["slices", "volumes"],
                  shard=shards(), ext=["safetensors", "csv"])


def final_outputs():
    """Everything `snakemake` builds by default for the study."""
    return [
        f"{RESULTS}/manifest.csv",
        f"{RESULTS}/qc/quarantine.csv",
        training_sets,
        f"{RESULTS}/figures/registration_overlay.png",
        f"{RESULTS}/figures/mask_overlay.png",
    ]
