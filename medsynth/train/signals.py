"""Preemption signals, in one place: the exit status, the flag a loop polls, and forwarding to a child.

SLURM (``--signal=USR1@300``, ``scancel``) and Snakemake send SIGTERM / SIGUSR1 before a job is killed.
A training loop or sampler records the signal with :class:`SignalFlag`, finishes its step or batch,
checkpoints and exits with :data:`PREEMPTED_EXIT_CODE`; a process that runs its work in a child (the
multi-process launcher, nnU-Net's commands) passes the signal on with :func:`forward_signals`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = ["PREEMPTED_EXIT_CODE", "PREEMPTION_SIGNALS", "SignalFlag", "forward_signals"]

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" - the job should be requeued
#: The signals that ask a job to checkpoint and stop (those this platform has).
PREEMPTION_SIGNALS: tuple[int, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class SignalFlag:
    """Install SIGTERM/SIGUSR1 handlers that only record the signal; restore the old ones on exit.

    In a multi-process run the ranks may see the signal at different steps (or only some of them see
    it): :meth:`agreed` makes every rank stop after the same step, so no rank waits forever in a
    collective its peers have left.
    """

    SIGNALS = PREEMPTION_SIGNALS

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal API
        self.received = signum

    def agreed(self, accelerator: Any = None) -> bool:
        """True when any process received a signal (one all-reduce per call when there are several)."""
        stop = self.received is not None
        if accelerator is None or accelerator.num_processes == 1:
            return stop
        seen = accelerator.reduce(torch.tensor([1.0 if stop else 0.0], device=accelerator.device), reduction="sum")
        return bool(seen.item() > 0)

    def __enter__(self) -> "SignalFlag":
        if self.enabled:
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


@contextlib.contextmanager
def forward_signals(proc: subprocess.Popen, signals: Sequence[int] = PREEMPTION_SIGNALS,
                    translate: Mapping[int, int] | None = None) -> Iterator[list[int]]:
    """Pass ``signals`` on to ``proc`` while it runs; yields the list of those that arrived.

    ``translate`` maps a received signal to the one sent (e.g. SIGUSR1 -> SIGTERM for a child that only
    stops cleanly on SIGTERM). Handlers are installed from the main thread only (elsewhere Python cannot)
    and restored on exit.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    translate = dict(translate or {})

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(translate.get(signum, signum))

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
