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
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

__all__ = ["WORKER_ENV", "in_worker", "is_main_process", "launch_processes", "accelerate_command", "relaunch"]

log = logging.getLogger(__name__)

#: set by torch.distributed.run (accelerate's launcher) in every worker
WORKER_ENV = "LOCAL_RANK"


def in_worker() -> bool:
    """True inside a worker started by ``accelerate launch`` / ``torchrun``."""
    return os.environ.get(WORKER_ENV) is not None


def is_main_process() -> bool:
    """True outside a launch and in the rank-0 worker of one (for files only one process may write)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


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
                       args: Sequence[str] = ()) -> list[str]:
    """The ``accelerate launch`` command line that runs ``script`` in ``processes`` workers on this node."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(int(processes)),
            "--num_machines", "1", "--main_process_port", str(port or _free_port()),
            "--mixed_precision", str(mixed_precision), "--dynamo_backend", "no", str(script), *map(str, args)]


def relaunch(processes: int, *, mixed_precision: str = "no", script: str | None = None) -> bool:
    """Run this script in ``processes`` accelerate workers; True when they did the work (the caller skips it).

    Returns False (the caller works itself) for one process or when already inside a worker. A failed
    launch raises ``SystemExit`` with the workers' exit code (75 = preempted, checkpoint written).
    """
    if processes <= 1 or in_worker():
        return False
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # CPU workers with the gloo backend
    cmd = accelerate_command(script or sys.argv[0], processes, mixed_precision=mixed_precision,
                             args=() if script else sys.argv[1:])
    log.info("launching %d processes: %s", processes, " ".join(cmd))
    sys.stderr.flush()
    code = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False).returncode
    if code != 0:
        raise SystemExit(code)
    return True
