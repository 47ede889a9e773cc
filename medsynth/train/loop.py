"""A plain, linear training loop on an :class:`accelerate.Accelerator`, resumable bit-for-bit.

``train(model, loss_step, dataset, config)`` runs ``config.steps`` optimizer steps of AdamW with a
cosine schedule and linear warm-up, gradient accumulation and clipping, and records every step in
``loss_curve.csv`` (and TensorBoard scalars every ``log_every`` steps), where :class:`TrainOutputs` says
(by default the layout of ``config.output_dir``).

Determinism and resume
----------------------
Nothing about the data order or the noise depends on how many steps this *process* has run:

* Data order: the sample stream is the concatenation of per-epoch permutations, epoch ``e`` using
  ``randperm(len(dataset))`` from a generator seeded with ``derive_seed(seed, "data", e)``. Micro-batch
  ``j = step * grad_accum + micro`` takes stream positions ``[j * B * W + r * B, ... + B)`` (``B``
  batch size, ``W`` processes, ``r`` rank); a batch may straddle an epoch boundary.
* Noise: ``loss_step`` receives a fresh CPU ``torch.Generator`` seeded with
  ``derive_seed(seed, "noise", step, micro, rank)`` for its ``t`` / noise draws.
* Global RNG (dropout etc.): ``torch.manual_seed(derive_seed(seed, "global", step, rank))`` before
  each step.

So the only loop state is the step counter (:mod:`.seeding`). A checkpoint (``checkpoints/step-XXXXXX``,
written by ``accelerator.save_state``) holds the model weights, the AdamW moments and step counts,
the LR-scheduler state, accelerate's RNG states, the loop state (step, seed, data/noise scheme) and any
``extra_state`` objects (:mod:`.checkpoints`). ``train`` called again with a checkpoint in place loads the
latest one and continues; rows of the curve after that step (written before a kill) are
dropped, and TensorBoard events after it are purged. A run killed after ``k`` steps and restarted ends
with weights identical (``torch.equal``, on the CPU) to an uninterrupted run. Nothing appears under a
final name before the run completes: the curve grows in ``loss_curve.csv.partial`` and the final model
is written into a temporary folder that is renamed into place.

Preemption
----------
SIGTERM and SIGUSR1 (what SLURM sends before a time limit, ``--signal``) only set a flag; the loop
finishes the current step, writes a checkpoint and returns ``TrainResult(status="preempted")``, whose
``exit_code`` is :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``) so a wrapper can requeue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from medsynth.fsutil import remove_stale_temporaries, write_text_atomic
from medsynth.train.checkpoints import CHECKPOINT_PATTERN, latest_checkpoint, list_checkpoints, run_fingerprint, save_model
from medsynth.train.config import LOSS_CURVE, TrainConfig, TrainOutputs, TrainResult, resume_refusal
from medsynth.train.curve import LossCurve
from medsynth.train.data import TensorDictDataset
from medsynth.train.seeding import DATA_SCHEME, LoopState, derive_seed, stream_indices
from medsynth.train.signals import PREEMPTED_EXIT_CODE, SignalFlag

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "SignalFlag",
    "CHECKPOINT_PATTERN",
    "TrainConfig",
    "TrainOutputs",
    "TrainResult",
    "LoopState",
    "LossStep",
    "derive_seed",
    "run_fingerprint",
    "stream_indices",
    "latest_checkpoint",
    "list_checkpoints",
    "make_accelerator",
    "save_model",
    "torch_threads",
    "train",
]

log = logging.getLogger(__name__)

LossStep = Callable[[nn.Module, dict[str, torch.Tensor], int, torch.Generator], Mapping[str, torch.Tensor]]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _get_batch(dataset: Any, indices: Sequence[int]) -> Any:
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    return torch.utils.data.default_collate([dataset[i] for i in indices])


def _param_list(trainable: Iterable[Any]) -> list[nn.Parameter]:
    out: list[nn.Parameter] = []
    for item in trainable:
        if isinstance(item, Mapping):
            out.extend(item["params"])
        else:
            out.append(item)
    return out


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (a training job's config ``threads``),
    restored after; ``None`` / 0 leaves it as it is."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def make_accelerator(mixed_precision: str = "no", find_unused_parameters: bool = False):
    """An Accelerator with ``mixed_precision`` (``"no"``, ``"bf16"``, ``"fp16"``); ``find_unused_parameters``
    for DDP when a player may sit out a step (the VAE's discriminator before its warm-up ends).

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a second Accelerator with another
    ``mixed_precision``. For sequential runs in one non-distributed process (a notebook, the tests:
    stage 1 in bf16, then something in fp32) that state is cleared first; in a distributed job the
    precision must match the launch configuration and accelerate's error is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    shared = AcceleratorState._shared_state
    if shared and PartialState().num_processes == 1:
        current = shared.get("_mixed_precision", shared.get("mixed_precision"))
        if current is not None and str(current) != mixed_precision:
            AcceleratorState._reset_state(reset_partial_state=False)
    from accelerate.utils import DistributedDataParallelKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    return Accelerator(mixed_precision=mixed_precision, step_scheduler_with_optimizer=False, kwargs_handlers=handlers)


def train(
    model: nn.Module,
    loss_step: LossStep,
    dataset: Any,
    config: TrainConfig,
    trainable_params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None = None,
    extra_state: Sequence[Any] | None = None,
    *,
    accelerator: Any = None,
    on_step_end: Callable[[int, dict[str, float]], None] | None = None,
    outputs: TrainOutputs | None = None,
    final_files: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps (resuming from the newest checkpoint if possible).

    ``loss_step(model, batch, step, generator)`` computes one micro-batch: ``batch`` is a dict of tensors
    on the accelerator's device, ``step`` the 0-based optimizer step, ``generator`` a seeded CPU
    ``torch.Generator`` for every random draw (``t``, noise). It returns a dict of scalar tensors; the
    ``"loss"`` entry is back-propagated, every entry is logged (averaged over the accumulation).

    ``dataset``: ``len()`` plus ``get_batch(indices)`` or ``__getitem__`` returning dicts of tensors, or a
    mapping of equally long tensors/arrays (wrapped in :class:`TensorDictDataset`).
    ``trainable_params``: parameters or AdamW param groups (default: every parameter with
    ``requires_grad``). ``extra_state``: objects with ``state_dict``/``load_state_dict`` saved in and
    restored from every checkpoint (e.g. an EMA). ``accelerator``: an existing ``Accelerator`` (its
    ``step_scheduler_with_optimizer`` must be False); by default one is made from the config.
    ``on_step_end(step, row)`` is called after each optimizer step with the 1-based step and CSV row.
    ``outputs``: where the run writes (default: :meth:`TrainOutputs.under` ``config.output_dir``).
    ``final_files``: file name -> text written into the final model folder with the model (one rename).
    """
    if isinstance(dataset, Mapping):
        dataset = TensorDictDataset(dataset)
    n = len(dataset)
    if n < 1:
        raise ValueError("empty dataset")
    out = Path(config.output_dir)
    paths = outputs or TrainOutputs.under(out)
    for folder in {paths.final.parent, paths.curve.parent, paths.config.parent, paths.checkpoints.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(config.mixed_precision)
    from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    model = accelerator.prepare(model)
    if trainable_params is None:
        trainable_params = [p for p in model.parameters() if p.requires_grad]
    groups = list(trainable_params)
    params = _param_list(groups)
    if not params:
        raise ValueError("no trainable parameters")
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                                  weight_decay=config.weight_decay)
    if config.lr_schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    state = LoopState(config.seed)
    accelerator.register_for_checkpointing(state, *(extra_state or ()))

    resumed_from = latest_checkpoint(paths.checkpoints)
    why = resume_refusal(resumed_from, config) if resumed_from is not None else None
    accelerator.wait_for_everyone()  # every rank has chosen before the main process deletes anything
    if why:
        log.warning("not resuming %s: %s; starting from step 0", resumed_from, why)
        if accelerator.is_main_process:
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
        resumed_from = None
    if resumed_from is not None:
        accelerator.load_state(str(resumed_from))
        log.info("resumed from %s (step %d)", resumed_from, state.step)
    start = state.step
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    if main:  # what a run killed while writing its outputs left beside them
        for stale in (*remove_stale_temporaries(paths.final), *remove_stale_temporaries(paths.config)):
            log.info("removed %s (left by a run killed while writing)", stale)
    curve = LossCurve(paths.curve, start, enabled=main, checkpoint=resumed_from)
    writer = SummaryWriter(str(paths.tensorboard), purge_step=start + 1) if main else None
    record = {k: v for k, v in config.to_json().items() if k != "fingerprint"}  # mtimes: not an output
    record["processes"] = world  # accelerate workers (medsynth.launch); batch_size is per process

    def checkpoint() -> Path:
        root = paths.checkpoints
        final = root / f"step-{state.step:06d}"
        tmp = root / f"step-{state.step:06d}.partial"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every rank has written its RNG state into tmp before it is renamed
        if main:
            if curve.working.exists():
                shutil.copyfile(curve.working, tmp / LOSS_CURVE)
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": state.step, "seed": config.seed, "data_scheme": DATA_SCHEME,
                 "config": config.to_json()}, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in list_checkpoints(root)[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    history: list[dict[str, float]] = []
    status: Literal["completed", "preempted"] = "completed"
    last_ckpt: Path | None = resumed_from
    step_time = 0.0
    micro_size = config.batch_size * world
    pbar = tqdm(total=config.steps, initial=start, disable=not (main and config.progress), desc="train",
                dynamic_ncols=True)
    flag = SignalFlag(config.handle_signals)
    try:
        with flag:
            for step in range(start, config.steps):
                t0 = time.perf_counter()
                model.train()
                torch.manual_seed(derive_seed(config.seed, "global", step, rank))
                sums: dict[str, torch.Tensor] = {}
                for micro in range(config.grad_accum):
                    j = step * config.grad_accum + micro
                    indices = stream_indices(n, config.seed, j * micro_size + rank * config.batch_size,
                                             config.batch_size)
                    batch = _to_device(_get_batch(dataset, indices), device)
                    gen = torch.Generator().manual_seed(derive_seed(config.seed, "noise", step, micro, rank))
                    sync = micro == config.grad_accum - 1
                    ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
                    with ctx:
                        with accelerator.autocast():
                            terms = dict(loss_step(model, batch, step, gen))
                        if "loss" not in terms:
                            raise KeyError("loss_step must return a 'loss' entry")
                        accelerator.backward(terms["loss"] / config.grad_accum)
                    for k, v in terms.items():
                        v = torch.as_tensor(v).detach().float().to(device)
                        sums[k] = sums.get(k, 0.0) + v / config.grad_accum
                grad_norm = float("nan")
                if config.max_grad_norm is not None and config.max_grad_norm > 0:
                    grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
                lr = float(scheduler.get_last_lr()[0])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step = step + 1

                keys = list(sums)
                values = torch.stack([sums[k] for k in keys])
                if world > 1:
                    values = accelerator.reduce(values, reduction="mean")
                row = {"step": state.step, "lr": lr, "grad_norm": grad_norm}
                row.update({k: float(v) for k, v in zip(keys, values.cpu())})
                history.append(row)
                curve.append(row)
                if writer is not None and (state.step % max(config.log_every, 1) == 0 or state.step == config.steps):
                    for k, v in row.items():
                        if k != "step" and math.isfinite(v):
                            writer.add_scalar(f"train/{k}", v, state.step)
                pbar.update(1)
                if main and config.progress:
                    pbar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.3g}")
                step_time += time.perf_counter() - t0
                if on_step_end is not None:
                    on_step_end(state.step, row)

                if flag.agreed(accelerator):
                    status = "preempted"
                    log.warning("signal %s received: checkpointing at step %d and stopping", flag.received or "(by a peer)",
                                state.step)
                    last_ckpt = checkpoint()
                    break
                if state.step == config.steps or (config.checkpoint_every > 0 and state.step % config.checkpoint_every == 0):
                    last_ckpt = checkpoint()
    finally:
        pbar.close()
        curve.close()
        if writer is not None:
            writer.flush()
            writer.close()

    final_dir = None
    if status == "completed" and config.save_final and main:
        final_dir = save_model(accelerator.unwrap_model(model), paths.final, extra_files=final_files)
    if status == "completed" and main:  # the run's records appear under their names once it is complete
        curve.finish()
        write_text_atomic(paths.config, json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()
    steps_run = len(history)
    return TrainResult(status=status, step=state.step, output_dir=out, checkpoint=last_ckpt, final_dir=final_dir,
                       resumed_from=resumed_from, signal=flag.received,
                       seconds_per_step=step_time / steps_run if steps_run else float("nan"), history=history)
