"""Finished sampling batches kept on disk, so a preempted or failed sampling job resumes where it stopped.

Every batch of a sampling run is reproducible on its own (its noise and generator are derived from the
run's seed and the batch's first row), so a rerun may take finished batches from disk and integrate
only the rest: the result equals an uninterrupted run's. :class:`BatchStore` keeps one
``batch_<first row>.safetensors`` per finished batch (the latents, with its NFE and seconds as
metadata) in a folder next to the job's output (not a declared output: Snakemake leaves it in place
when the job fails). A ``fingerprint.txt`` names the run (settings, model and input files): batches of
another run are discarded, never reused. The folder is removed once the set has been written.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from medsynth.fsutil import atomic_path

__all__ = ["BatchStore"]

log = logging.getLogger(__name__)


class BatchStore:
    """Finished batches of one sampling run in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        stamp = self.folder / "fingerprint.txt"
        if self.folder.exists() and (not stamp.is_file() or stamp.read_text().strip() != fingerprint):
            log.warning("%s: batches of a run with other settings or inputs; discarded", self.folder)
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint + "\n")

    def _path(self, start: int) -> Path:
        return self.folder / f"batch_{start:08d}.safetensors"

    def load(self, start: int) -> tuple[torch.Tensor, int, float] | None:
        """``(latents, nfe, seconds)`` of the batch beginning at row ``start``, or None when not finished."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = self._path(start)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("batch", "{}"))
        return load_file(str(path))["x0"], int(meta["nfe"]), float(meta["seconds"])

    def save(self, start: int, x0: torch.Tensor, nfe: int, seconds: float) -> None:
        """Keep the finished batch beginning at row ``start`` (written atomically)."""
        from safetensors.torch import save_file

        with atomic_path(self._path(start), suffix=".safetensors") as tmp:
            save_file({"x0": x0.detach().cpu().contiguous()}, str(tmp),
                      metadata={"batch": json.dumps({"nfe": int(nfe), "seconds": float(seconds)})})

    def finished(self) -> int:
        """Number of finished batches on disk."""
        return sum(1 for _ in self.folder.glob("batch_*.safetensors"))

    def clear(self) -> None:
        """Remove the folder (the set is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
