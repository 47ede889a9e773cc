"""Pretrained networks: the model registry (``config/models.yaml``), the weights rule's fetch, and local lookup.

Every pretrained network a study uses is a registry entry, fetched once by the ``weights`` rule into
``<weights_dir>/<name>/files`` (shared by all studies) with an ``inventory.csv`` (path, bytes, sha256)
and a ``source.json`` (where it came from, which commit). Consumers only ever read that folder
(:func:`model_files`); nothing loads a model from the network at run time.
"""

from medsynth.weights.local import WeightsMissing, inventory_path, model_files
from medsynth.weights.registry import ModelRegistryError, load_models, model_entry

__all__ = ["ModelRegistryError", "WeightsMissing", "inventory_path", "load_models", "model_entry", "model_files"]
