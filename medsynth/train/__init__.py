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

from .data import TensorDictDataset, load_slice_dataset
from .ewc import (
    anchor_parameters,
    ewc_penalty,
    fisher_diagonal,
    group_scores,
    load_ewc,
    save_ewc,
    select_layers,
    unfreeze,
)
from .flow import EWCTerm, RectifiedFlowStep, call_model
from .lora import add_lora, load_lora, lora_parameters, lora_targets, merge_lora, save_lora
from .loop import (
    PREEMPTED_EXIT_CODE,
    TrainConfig,
    TrainOutputs,
    TrainResult,
    derive_seed,
    latest_checkpoint,
    save_model,
    train,
)

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "EWCTerm",
    "RectifiedFlowStep",
    "TensorDictDataset",
    "TrainConfig",
    "TrainOutputs",
    "TrainResult",
    "add_lora",
    "anchor_parameters",
    "call_model",
    "derive_seed",
    "ewc_penalty",
    "fisher_diagonal",
    "group_scores",
    "latest_checkpoint",
    "load_ewc",
    "load_lora",
    "load_slice_dataset",
    "lora_parameters",
    "lora_targets",
    "merge_lora",
    "save_ewc",
    "save_lora",
    "save_model",
    "select_layers",
    "train",
    "unfreeze",
]
