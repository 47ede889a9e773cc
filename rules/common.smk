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


def ingest_shards(wildcards):
    """Shard folders of the ingest stage (known once the sources table exists)."""
    sources = pd.read_csv(checkpoints.discover_cases.get().output.sources, dtype=str, keep_default_na=False)
    return expand(f"{RESULTS}/ingest/shard-{{shard}}", shard=_shard_ids(len(sources), config["shard_size"]))


def final_outputs():
    """Everything `snakemake` builds by default for the study."""
    return [
        f"{RESULTS}/manifest.csv",
        f"{RESULTS}/qc/quarantine.csv",
    ]
