"""The settings, the output layout and the outcome of one training run of :func:`medsynth.train.train`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medsynth.train.signals import PREEMPTED_EXIT_CODE

__all__ = ["LOSS_CURVE", "RESUME_FREE", "TrainConfig", "TrainOutputs", "TrainResult", "resume_refusal"]

#: the loss curve's file name, in a run's folder and inside every checkpoint
LOSS_CURVE = "loss_curve.csv"


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one training run.

    ``steps`` counts optimizer steps; each consumes ``grad_accum`` micro-batches of ``batch_size``
    samples per process. The LR rises linearly for ``warmup_steps`` and then follows a half cosine to
    0 at ``steps`` (``diffusers.optimization.get_cosine_schedule_with_warmup``; ``lr_schedule: constant``
    keeps it after the warm-up, as the VAE tunes); change ``steps`` only
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
    lr_schedule: Literal["cosine", "constant"] = "cosine"
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
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
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


@dataclass(frozen=True)
class TrainOutputs:
    """Where one run writes. A rule passes its declared outputs (``final``, ``curve``, ``config``); the
    work folders ``checkpoints`` and ``tensorboard`` are kept between attempts, so they are not declared.
    """

    final: Path
    curve: Path
    config: Path
    checkpoints: Path
    tensorboard: Path

    @classmethod
    def under(cls, folder: str | Path, final: str = "final") -> "TrainOutputs":
        """The layout of one folder: ``final/`` (or the name ``final``), ``loss_curve.csv``,
        ``train_config.json``, ``checkpoints/``, ``tensorboard/`` (the default of :func:`medsynth.train.train`)."""
        folder = Path(folder)
        return cls(folder / final, folder / LOSS_CURVE, folder / "train_config.json", folder / "checkpoints",
                   folder / "tensorboard")

    @classmethod
    def of(cls, where: "TrainOutputs | str | Path", final: str = "final") -> "TrainOutputs":
        """``where`` itself, or the layout (:meth:`under`) of the folder it names."""
        return where if isinstance(where, TrainOutputs) else cls.under(where, final)

    @classmethod
    def declared(cls, final: str | Path, curve: str | Path, config: str | Path) -> "TrainOutputs":
        """A rule's declared outputs; the work folders ``checkpoints/`` and ``tensorboard/`` (kept between
        attempts, so not declared) sit beside ``final``."""
        folder = Path(final).parent
        return cls(Path(final), Path(curve), Path(config), folder / "checkpoints", folder / "tensorboard")


#: TrainConfig fields that may differ between a run and its resumption (bookkeeping, not the schedule).
RESUME_FREE = ("output_dir", "progress", "handle_signals", "save_final", "log_every", "keep_checkpoints",
                "checkpoint_every")


def resume_refusal(checkpoint: Path, config: TrainConfig) -> str | None:
    """Why ``checkpoint`` must not be resumed by ``config`` (None if it may)."""
    try:
        saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("config", {})
    except (OSError, ValueError) as exc:
        return f"unreadable trainer_state.json ({exc})"
    now = config.to_json()
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE and saved.get(k) != now.get(k))
    return f"settings changed since it was written: {', '.join(changed)}" if changed else None
