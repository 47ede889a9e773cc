"""Statistics of the pipeline's numbers: bootstrap intervals over patients (:mod:`.bootstrap`)."""

from medsynth.stats.bootstrap import (
    BootstrapSettings,
    Estimate,
    ResamplingUnits,
    bootstrap,
    bootstrap_means,
    percentile_interval,
    resampling_units,
)

__all__ = ["BootstrapSettings", "Estimate", "ResamplingUnits", "bootstrap", "bootstrap_means", "percentile_interval",
           "resampling_units"]
