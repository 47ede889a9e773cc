"""nnU-Net's entry points in subprocesses, with its folders in the environment and signals forwarded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from .params import LOG_TAIL_LINES, NnUNetCommandError


from medsynth.train.signals import PREEMPTION_SIGNALS, forward_signals


def nnunet_env(work: str | Path, num_processes: int = 1) -> dict[str, str]:
    """Environment for nnU-Net subprocesses: its three folders under ``work`` and ``nnUNet_n_proc_DA``."""
    work = Path(work)
    env = dict(os.environ)
    env.update({"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_n_proc_DA": str(int(num_processes)),
                "PYTHONUNBUFFERED": "1"})
    return env


def entry_point(name: str) -> list[str]:
    """Command prefix running nnU-Net's console script ``name`` with this interpreter."""
    module, func = {
        "nnUNetv2_plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                                         "plan_and_preprocess_entry"),
        "nnUNetv2_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "preprocess_entry"),
        "nnUNetv2_train": ("nnunetv2.run.run_training", "run_training_entry"),
    }[name]
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; {func}()"]


def run_command(cmd: Sequence[str], log_path: str | Path, env: Mapping[str, str] | None = None,
                name: str | None = None) -> int | None:
    """Run ``cmd``, appending stdout+stderr to ``log_path``.

    Returns ``None`` on success and the forwarded signal number when a preemption signal arrived (see
    :func:`medsynth.train.signals.forward_signals`); raises :class:`NnUNetCommandError` on any other non-zero exit.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    shown = " ".join([name or cmd[0], *cmd[(3 if name else 1):]])
    with log_path.open("a") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(env) if env is not None else None, bufsize=1, errors="replace")
        with forward_signals(proc, (*PREEMPTION_SIGNALS, signal.SIGINT),
                             translate={s: signal.SIGTERM for s in PREEMPTION_SIGNALS}) as received:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
            code = proc.wait()
    if received:
        return received[0]
    if code != 0:
        raise NnUNetCommandError(f"nnU-Net command failed (exit code {code}): {shown}\nlog: {log_path}\n"
                                 f"last lines of its output:\n" + "\n".join(tail))
    return None
