"""Which process this is: a worker of a multi-process launch or not, rank 0 or not (torch-free, so the
provenance of every rule can ask without importing the training stack)."""

from __future__ import annotations

import os

__all__ = ["WORKER_ENV", "in_worker", "is_main_process"]

#: set by torch.distributed.run (accelerate's launcher) in every worker
WORKER_ENV = "LOCAL_RANK"


def in_worker() -> bool:
    """True inside a worker started by ``accelerate launch`` / ``torchrun``."""
    return os.environ.get(WORKER_ENV) is not None


def is_main_process() -> bool:
    """True outside a launch and in the rank-0 worker of one (for files only one process may write)."""
    return int(os.environ.get("RANK", "0") or 0) == 0
