"""Multi-process training: a training rule's script relaunches itself under ``accelerate launch``.

A SLURM job of a training rule is given ``resources.gpu`` GPUs (config ``resources.<rule>.gpu``). Its
script calls :func:`relaunch` first: with more than one process to run (the stage's ``processes``
key, default the job's GPU count) and not already inside a launch, it runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1
        --main_process_port <free port> --mixed_precision <stage's> --dynamo_backend no <this script>

and waits; every worker runs the same script (Snakemake's script file holds the job's inputs and
params), finds ``LOCAL_RANK`` set by the launcher and does the work. The training loop
(:mod:`medsynth.train.loop`) shards batches by rank, averages gradients (DDP) and writes checkpoints,
the loss curve and the final model from the main process only. Without a GPU the workers run on the
CPU (``ACCELERATE_USE_CPU``, gloo backend) - how the tests exercise this path on any machine.

Preemption: SIGTERM / SIGUSR1 reaching the launching process (SLURM's ``--signal``, ``scancel``) are
forwarded to the launcher, which hands them on to every worker (``PET_SIGNALS_TO_HANDLE``
includes SIGUSR1) and gives them :data:`SHUTDOWN_TIMEOUT_S` to finish; the workers agree on the step to
stop after, checkpoint and exit 75. The launcher itself exits 1 after a signal whatever its workers did,
so each worker runs through :mod:`medsynth.launch_worker`, which records its exit status: the
launching process exits 75 (the requeued / rerun job resumes) only when every worker stopped with 75,
and with the failed worker's status otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from medsynth.workers import WORKER_ENV, in_worker, is_main_process

__all__ = ["WORKER_ENV", "in_worker", "is_main_process", "job_device", "resolve_device", "launch_processes", "set_threads", "accelerate_command",
           "relaunch"]

log = logging.getLogger(__name__)

#: signals the launcher passes on to its workers (torch.distributed.elastic's default plus SIGUSR1)
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
#: default grace the launcher gives signalled workers before SIGKILL (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``
#: overrides): the checkpoint of a large model with its optimizer state can take longer than torch's 30 s;
#: ask SLURM for the warning signal at least this long before the time limit (``--signal=USR1@300``)
SHUTDOWN_TIMEOUT_S = 300
#: the folder holding the medsynth package (put on the workers' PYTHONPATH)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_device():
    """The device of this process: its own GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get(WORKER_ENV, "0") or 0))
    return torch.device("cpu")


def resolve_device(name: str | None = "auto", key: str = "device"):
    """A config device name: ``auto`` (:func:`job_device`), ``cpu`` or ``cuda[:i]`` (refused without CUDA)."""
    import torch

    name = str(name or "auto")
    if name == "auto":
        return job_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key} is {name!r} but CUDA is not available on this machine")
    return device


def set_threads(cfg: Mapping) -> None:
    """Torch intra-op threads from the ``threads`` key of a complete config section (``vae``, ``volumes.vae``,
    ``generator``, ``downstream``: validated, or completed by :func:`medsynth.settings.section`, so the
    schema gives the default); at least 1."""
    import torch

    torch.set_num_threads(max(1, int(cfg["threads"])))


def launch_processes(stage_cfg: Mapping | None, resources: Mapping | None) -> int:
    """Processes a training job runs: the stage's ``processes`` if set, else the job's ``gpu`` count, at least 1."""
    own = (stage_cfg or {}).get("processes")
    if own is not None:
        n = int(own)
    else:
        try:
            n = int((resources or {}).get("gpu", 0) or 0)
        except (TypeError, ValueError):
            n = 0
    return max(1, n)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_command(script: str, processes: int, *, mixed_precision: str = "no", port: int | None = None,
                       args: Sequence[str] = (), status_dir: str | None = None) -> list[str]:
    """The ``accelerate launch`` command line that runs ``script`` in ``processes`` workers on this node.

    With ``status_dir`` every worker runs the script through :mod:`medsynth.launch_worker`, which records
    the worker's exit status there.
    """
    target = [str(script), *map(str, args)]
    if status_dir is not None:
        target = ["--module", "medsynth.launch_worker", str(status_dir), *target]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(int(processes)),
            "--num_machines", "1", "--main_process_port", str(port or _free_port()),
            "--mixed_precision", str(mixed_precision), "--dynamo_backend", "no", *target]


def relaunch(processes: int, *, mixed_precision: str = "no", script: str | None = None) -> bool:
    """Run this script in ``processes`` accelerate workers; True when they did the work (the caller skips it).

    Returns False (the caller works itself) for one process or when already inside a worker. Otherwise
    it raises ``SystemExit``: 75 when every worker stopped with 75 (preempted, checkpoint written),
    else the first failed worker's status (or the launcher's when no worker recorded one).
    """
    if processes <= 1 or in_worker():
        return False
    import shutil
    import tempfile

    import torch

    from medsynth.launch_worker import read_statuses
    from medsynth.train.signals import PREEMPTED_EXIT_CODE, forward_signals

    env = dict(os.environ)
    env["PET_SIGNALS_TO_HANDLE"] = FORWARDED_SIGNALS  # torch.distributed.run --signals-to-handle
    # seconds the launcher gives signalled workers to checkpoint before it kills them (torch: 30)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    # the workers import medsynth.launch_worker from this checkout (conda envs do not install the package)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # CPU workers with the gloo backend
    status_dir = tempfile.mkdtemp(prefix="medsynth-launch-")
    try:
        cmd = accelerate_command(script or sys.argv[0], processes, mixed_precision=mixed_precision,
                                 args=() if script else sys.argv[1:], status_dir=status_dir)
        log.info("launching %d processes: %s", processes, " ".join(cmd))
        sys.stderr.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
        with forward_signals(proc) as received:
            code = proc.wait()
        statuses = read_statuses(status_dir)
    finally:
        shutil.rmtree(status_dir, ignore_errors=True)
    if code == 0:
        return True
    if sorted(statuses) == list(range(processes)) and set(statuses.values()) == {PREEMPTED_EXIT_CODE}:
        log.warning("%s: every worker checkpointed and stopped (launcher exit %d)",
                    f"signal {received[0]} received" if received else "workers signalled", code)
        raise SystemExit(PREEMPTED_EXIT_CODE)
    failed = {r: s for r, s in sorted(statuses.items()) if s not in (0, PREEMPTED_EXIT_CODE)}
    silent = [r for r in range(processes) if r not in statuses]
    log.error("workers failed (launcher exit %d): exit status by rank %s%s", code, dict(sorted(statuses.items())),
              f"; killed before recording one: ranks {silent}" if silent else "")
    raise SystemExit(next(iter(failed.values()), code if code != PREEMPTED_EXIT_CODE else 1))
