"""What every worker of :func:`medsynth.launch.relaunch` runs: the rule's script, then its exit status on file.

``python -m medsynth.launch_worker <status_dir> <script> [args...]`` runs ``script`` as ``__main__`` (as
``python script args`` would) and, however it ends, writes the exit status to
``<status_dir>/rank<RANK>.exit``. The launching process reads these files: the launcher itself exits 1
after forwarding a signal, whether its workers checkpointed cleanly (status 75) or crashed, so only the
workers can say which happened.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

__all__ = ["STATUS_SUFFIX", "exit_status", "record_status", "read_statuses", "main"]

STATUS_SUFFIX = ".exit"


def exit_status(code: object) -> int:
    """The process exit status ``SystemExit(code)`` gives: None -> 0, an int -> itself, anything else -> 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


def record_status(status_dir: str | os.PathLike, rank: int, status: int) -> Path:
    """Write ``status`` to ``status_dir/rank<rank>.exit`` (atomically)."""
    path = Path(status_dir) / f"rank{rank}{STATUS_SUFFIX}"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{status}\n")
    os.replace(tmp, path)
    return path


def read_statuses(status_dir: str | os.PathLike) -> dict[int, int]:
    """Exit status per rank of the workers that recorded one (a worker killed outright records none)."""
    found: dict[int, int] = {}
    for path in Path(status_dir).glob(f"rank*{STATUS_SUFFIX}"):
        try:
            found[int(path.name[len("rank"):-len(STATUS_SUFFIX)])] = int(path.read_text().strip())
        except ValueError:
            continue
    return found


def main(argv: list[str]) -> None:
    """Run ``argv[1]`` with arguments ``argv[2:]``; record its exit status in ``argv[0]``."""
    if len(argv) < 2:
        raise SystemExit("usage: python -m medsynth.launch_worker STATUS_DIR SCRIPT [ARGS...]")
    status_dir, script, *args = argv
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script` would have it
    status = 1
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as exc:
        status = exit_status(exc.code)
        raise
    finally:
        record_status(status_dir, int(os.environ.get("RANK", "0") or 0), status)


if __name__ == "__main__":
    main(sys.argv[1:])
