"""Training: the resumable loop, ViCTr stage 1 (EWC layer selection + penalty) and stage 2 (LoRA).

* :mod:`.loop` - ``train`` (accelerate, AdamW + cosine warm-up, accumulation, clipping, CSV/TensorBoard
  logs, checkpoints, bit-exact resume, SIGTERM/SIGUSR1 preemption); its parts: :mod:`.config`
  (``TrainConfig``, ``TrainOutputs``, ``TrainResult``), :mod:`.seeding` (seeds, data order),
  :mod:`.checkpoints` (checkpoint folders, run fingerprint, ``save_model``), :mod:`.curve` (``LossCurve``,
  the one loss-curve writer), :mod:`.signals` (preemption), :mod:`.players` (``PlayerPair``: two players, one step).
* :mod:`.ewc` - ``fisher_diagonal``, ``select_layers``, ``unfreeze``, ``ewc_penalty``.
* :mod:`.lora` - ``lora_targets``, ``add_lora``, ``save_lora``/``load_lora``, ``merge_lora``.
* :mod:`.flow` - ``RectifiedFlowStep`` (a ``loss_step`` for the loop, optional EWC term).
* :mod:`.data` - ``TensorDictDataset``, ``load_slice_dataset`` (training-set shards).
"""

from __future__ import annotations

from medsynth.lazy import lazy_exports

#: public name -> submodule; loaded on first use, so that importing one submodule (e.g. ``medsynth.train.data``) does
#: not import the others' dependencies (peft, accelerate, transformers)
_EXPORTS = {
    "TensorDictDataset": "data",
    "load_slice_dataset": "data",
    "anchor_parameters": "ewc",
    "ewc_penalty": "ewc",
    "fisher_diagonal": "ewc",
    "group_scores": "ewc",
    "load_ewc": "ewc",
    "save_ewc": "ewc",
    "select_layers": "ewc",
    "unfreeze": "ewc",
    "EWCTerm": "flow",
    "RectifiedFlowStep": "flow",
    "call_model": "flow",
    "add_lora": "lora",
    "load_lora": "lora",
    "lora_parameters": "lora",
    "lora_targets": "lora",
    "merge_lora": "lora",
    "save_lora": "lora",
    "PREEMPTED_EXIT_CODE": "loop",
    "TrainConfig": "loop",
    "TrainOutputs": "loop",
    "TrainResult": "loop",
    "derive_seed": "loop",
    "latest_checkpoint": "loop",
    "save_model": "loop",
    "train": "loop",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
