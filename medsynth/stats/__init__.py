"""Statistics of the pipeline's numbers: bootstrap intervals over patients (:mod:`.bootstrap`), records of a
model's seed replicates pooled into one (:mod:`.replicates`)."""

from medsynth.stats.bootstrap import (
    BootstrapSettings,
    Estimate,
    ResamplingUnits,
    bootstrap,
    bootstrap_means,
    percentile_interval,
    resampling_units,
)
from medsynth.stats.replicates import pool_records, seed_draws

__all__ = ["BootstrapSettings", "Estimate", "ResamplingUnits", "bootstrap", "bootstrap_means", "percentile_interval",
           "pool_records", "resampling_units",
           "seed_draws"]
