"""medsynth: controllable, pathology-aware CT/MRI synthesis as a reproducible pipeline."""

__version__ = "0.1.0"
