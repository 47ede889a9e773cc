"""A plain, linear training loop on an :class:`accelerate.Accelerator`, resumable bit-for-bit.

``train(model, loss_step, dataset, config)`` runs ``config.steps`` optimizer steps of AdamW with a
cosine schedule and linear warm-up, gradient accumulation and clipping, and records every step in
``output_dir/loss_curve.csv`` (and TensorBoard scalars every ``log_every`` steps).

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

So the only loop state is the step counter. A checkpoint (``output_dir/checkpoints/step-XXXXXX``,
written by ``accelerator.save_state``) holds the model weights, the AdamW moments and step counts,
the LR-scheduler state, accelerate's RNG states, the loop state (step, seed, data/noise scheme) and any
``extra_state`` objects. ``train`` called again on an ``output_dir`` that has a checkpoint loads the
latest one and continues; rows of ``loss_curve.csv`` after that step (written before a kill) are
dropped, and TensorBoard events after it are purged. A run killed after ``k`` steps and restarted ends
with weights identical (``torch.equal``, on the CPU) to an uninterrupted run.

Preemption
----------
SIGTERM and SIGUSR1 (what SLURM sends before a time limit, ``--signal``) only set a flag; the loop
finishes the current step, writes a checkpoint and returns ``TrainResult(status="preempted")``, whose
``exit_code`` is :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``) so a wrapper can requeue.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medsynth.train.data import TensorDictDataset
from medsynth.train.signals import PREEMPTED_EXIT_CODE, SignalFlag

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "SignalFlag",
    "CHECKPOINT_PATTERN",
    "TrainConfig",
    "TrainResult",
    "LoopState",
    "LossStep",
    "derive_seed",
    "stream_indices",
    "latest_checkpoint",
    "list_checkpoints",
    "make_accelerator",
    "save_model",
    "train",
]

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{6,})$")
LOSS_CURVE = "loss_curve.csv"
DATA_SCHEME = "concat-epoch-permutations/v1"

LossStep = Callable[[nn.Module, dict[str, torch.Tensor], int, torch.Generator], Mapping[str, torch.Tensor]]


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one training run.

    ``steps`` counts optimizer steps; each consumes ``grad_accum`` micro-batches of ``batch_size``
    samples per process. The LR rises linearly for ``warmup_steps`` and then follows a half cosine to
    0 at ``steps`` (``diffusers.optimization.get_cosine_schedule_with_warmup``); change ``steps`` only
    for a fresh run, a resumed run must use the same schedule. ``max_grad_norm`` None/<=0 disables
    clipping. ``mixed_precision`` is passed to the Accelerator (``"bf16"`` autocasts the forward pass;
    weights and optimizer stay float32). ``checkpoint_every`` 0 disables periodic checkpoints (a
    checkpoint is still written at the end and on preemption); the newest ``keep_checkpoints`` are kept.
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "bf16"] = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    output_dir: str | Path = "train-output"
    save_final: bool = True
    progress: bool = True
    handle_signals: bool = True
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable view (paths as strings)."""
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        d["betas"] = list(self.betas)
        return d


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``status``: ``"completed"`` (all steps run, final model saved) or ``"preempted"`` (a signal arrived;
    state saved in ``checkpoint``). ``step``: optimizer steps done in total (across resumes).
    ``seconds_per_step``: mean wall time of the optimizer steps run by this call (data, forward,
    backward, update, logging; checkpoint writing excluded). ``history``: the CSV rows of this call.
    """

    status: Literal["completed", "preempted"]
    step: int
    output_dir: Path
    checkpoint: Path | None = None
    final_dir: Path | None = None
    resumed_from: Path | None = None
    signal: int | None = None
    seconds_per_step: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when completed, :data:`PREEMPTED_EXIT_CODE` when preempted (for ``sys.exit``)."""
        return 0 if self.status == "completed" else PREEMPTED_EXIT_CODE


class LoopState:
    """The loop's checkpointed state (registered with ``accelerator.register_for_checkpointing``)."""

    def __init__(self, seed: int):
        self.step = 0
        self.seed = int(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "data_scheme": DATA_SCHEME}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"checkpoint was written with seed {state['seed']}, this run uses {self.seed}")
        if state.get("data_scheme", DATA_SCHEME) != DATA_SCHEME:
            raise ValueError(f"checkpoint data scheme {state.get('data_scheme')!r} != {DATA_SCHEME!r}")
        self.step = int(state["step"])


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 63-bit seed for an independent stream named by ``keys`` (numpy ``SeedSequence`` hashing)."""
    words = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        if isinstance(k, str):
            words.extend(k.encode())
        else:
            words.append(int(k) & 0xFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, "data", epoch))
    return torch.randperm(n, generator=g)


def stream_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Dataset indices at positions ``[start, start + count)`` of the epoch-permutation stream."""
    if n < 1:
        raise ValueError("empty dataset")
    out: list[int] = []
    perms: dict[int, torch.Tensor] = {}
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = _epoch_permutation(n, seed, epoch)
        out.append(int(perms[epoch][i]))
    return out


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
             and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


#: TrainConfig fields that may differ between a run and its resumption (bookkeeping, not the schedule).
_RESUME_FREE = ("output_dir", "progress", "handle_signals", "save_final", "log_every", "keep_checkpoints",
                "checkpoint_every")


def run_fingerprint(*settings: Any, files: Sequence[str | os.PathLike] = ()) -> str:
    """Identity of a training run's inputs: JSON of ``settings`` + (path, size, mtime) of every file.

    Used as :attr:`TrainConfig.fingerprint`: a checkpoint is resumed only by a run with the same
    fingerprint, so checkpoints left by a run with other settings or other input files (regenerated
    since) are never continued. Folders contribute every file below them.
    """
    import hashlib

    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(str(f) for f in files):
        path = Path(name)
        members = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
        for q in members:
            st = q.stat()
            h.update(f"{q}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _resumable(checkpoint: Path, config: "TrainConfig") -> str | None:
    """Why ``checkpoint`` must not be resumed by ``config`` (None if it may)."""
    try:
        saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("config", {})
    except (OSError, ValueError) as exc:
        return f"unreadable trainer_state.json ({exc})"
    now = config.to_json()
    changed = sorted(k for k in set(saved) | set(now) if k not in _RESUME_FREE and saved.get(k) != now.get(k))
    return f"settings changed since it was written: {', '.join(changed)}" if changed else None


def _has_lora(model: nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def save_model(model: nn.Module, out_dir: str | Path) -> Path:
    """Save a trained model to ``out_dir`` (a model with ``saved_module()`` saves that module instead).

    * model with LoRA adapters: the adapter only (``adapter_model.safetensors`` +
      ``adapter_config.json``, :func:`medsynth.train.lora.save_lora`); the base is the stage-1 model.
    * diffusers ``ModelMixin``: ``save_pretrained`` (safetensors + ``config.json``).
    * anything else: ``model.safetensors`` (state dict) + ``config.json`` (class and, when present, its
      ``config``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "saved_module"):  # a container of several trained players (DMD): save the one it names
        model = model.saved_module()
    if _has_lora(model):
        from medsynth.train.lora import save_lora

        return save_lora(model, out)
    try:
        from diffusers import ModelMixin
    except ImportError:  # pragma: no cover - diffusers is a dependency
        ModelMixin = ()  # type: ignore[assignment]
    if ModelMixin and isinstance(model, ModelMixin):
        model.save_pretrained(str(out), safe_serialization=True)
        return out
    from safetensors.torch import save_model as st_save_model

    st_save_model(model, str(out / "model.safetensors"))
    cfg = getattr(model, "config", None)
    try:
        cfg_json = json.loads(json.dumps(dict(cfg) if cfg is not None else {}, default=str))
    except (TypeError, ValueError):
        cfg_json = {"repr": repr(cfg)}
    meta = {"class": f"{type(model).__module__}.{type(model).__qualname__}", "config": cfg_json}
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _curve_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(newline="") as fh:
        return max(0, sum(1 for _ in fh) - 1)


class _LossCurve:
    """``loss_curve.csv``: one row per optimizer step, rewritten up to ``start`` on resume.

    Every checkpoint keeps a copy of the curve, so a resumed run whose ``loss_curve.csv`` was removed
    meanwhile (Snakemake deletes a failed or preempted job's declared outputs) still writes every step.
    """

    def __init__(self, path: Path, start: int, enabled: bool, checkpoint: Path | None = None):
        self.path = path
        self.enabled = enabled
        self.fieldnames: list[str] | None = None
        self._fh = None
        self._writer: csv.DictWriter | None = None
        if not enabled:
            return
        saved = checkpoint / LOSS_CURVE if checkpoint is not None else None
        if saved is not None and saved.exists() and _curve_rows(path) < _curve_rows(saved):
            shutil.copyfile(saved, path)
        kept: list[dict[str, str]] = []
        if path.exists() and start > 0:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.fieldnames = list(reader.fieldnames or []) or None
                kept = [r for r in reader if int(r["step"]) <= start]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            if self.fieldnames:
                w = csv.DictWriter(fh, self.fieldnames)
                w.writeheader()
                w.writerows(kept)
        os.replace(tmp, path)
        self._fh = path.open("a", newline="")
        if self.fieldnames:
            self._writer = csv.DictWriter(self._fh, self.fieldnames, extrasaction="ignore", restval="")

    def append(self, row: dict[str, float]) -> None:
        if not self.enabled or self._fh is None:
            return
        if self._writer is None:
            self.fieldnames = list(row)
            self._writer = csv.DictWriter(self._fh, self.fieldnames, extrasaction="ignore", restval="")
            self._writer.writeheader()
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


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


def make_accelerator(mixed_precision: str = "no"):
    """An Accelerator with ``mixed_precision`` (``"no"``, ``"bf16"``, ``"fp16"``).

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
    return Accelerator(mixed_precision=mixed_precision, step_scheduler_with_optimizer=False)


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
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps (resuming from ``config.output_dir`` if possible).

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
    """
    if isinstance(dataset, Mapping):
        dataset = TensorDictDataset(dataset)
    n = len(dataset)
    if n < 1:
        raise ValueError("empty dataset")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(config.mixed_precision)
    from diffusers.optimization import get_cosine_schedule_with_warmup
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
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    state = LoopState(config.seed)
    accelerator.register_for_checkpointing(state, *(extra_state or ()))

    resumed_from = latest_checkpoint(out)
    why = _resumable(resumed_from, config) if resumed_from is not None else None
    accelerator.wait_for_everyone()  # every rank has chosen before the main process deletes anything
    if why:
        log.warning("not resuming %s: %s; starting from step 0", resumed_from, why)
        if accelerator.is_main_process:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        resumed_from = None
    if resumed_from is not None:
        accelerator.load_state(str(resumed_from))
        log.info("resumed from %s (step %d)", resumed_from, state.step)
    start = state.step
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    curve = _LossCurve(out / LOSS_CURVE, start, enabled=main, checkpoint=resumed_from)
    writer = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1) if main else None
    if main:
        record = {k: v for k, v in config.to_json().items() if k != "fingerprint"}  # mtimes: not an output
        record["processes"] = world  # accelerate workers (medsynth.launch); batch_size is per process
        (out / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")

    def checkpoint() -> Path:
        root = out / "checkpoints"
        final = root / f"step-{state.step:06d}"
        tmp = root / f"step-{state.step:06d}.partial"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every rank has written its RNG state into tmp before it is renamed
        if main:
            if (out / LOSS_CURVE).exists():
                shutil.copyfile(out / LOSS_CURVE, tmp / LOSS_CURVE)
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": state.step, "seed": config.seed, "data_scheme": DATA_SCHEME,
                 "config": config.to_json()}, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in list_checkpoints(out)[:-config.keep_checkpoints]:
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
        final_dir = save_model(accelerator.unwrap_model(model), out / "final")
    accelerator.wait_for_everyone()
    steps_run = len(history)
    return TrainResult(status=status, step=state.step, output_dir=out, checkpoint=last_ckpt, final_dir=final_dir,
                       resumed_from=resumed_from, signal=flag.received,
                       seconds_per_step=step_time / steps_run if steps_run else float("nan"), history=history)
