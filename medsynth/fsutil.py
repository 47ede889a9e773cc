"""File-system helpers: checksums and atomic writes (no partial file ever keeps its final name)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

CHUNK_BYTES = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (algorithm: any hashlib name, e.g. sha256, md5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file."""
    return file_digest(path, "sha256")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only if the block succeeds.

    The temporary name keeps ``suffix`` (e.g. ``.nii.gz``) so that writers that dispatch on the
    extension still work. On any exception the temporary file or folder is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        else:
            tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Delete what :func:`atomic_path` / :func:`atomic_dir` left beside ``final`` when a process was killed
    mid-write (``.<name>.*.tmp*``); returns what was removed. Call it only where no other process writes ``final``."""
    final = Path(final)
    removed = sorted(final.parent.glob(f".{final.name}.*.tmp*")) if final.parent.is_dir() else []
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


class OutputFolderError(OSError):
    """The results folder cannot take the study's outputs (not writable, not a folder, or too little free space)."""


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(folder: str | os.PathLike, min_free_gib: float, key: str = "results_dir") -> None:
    """Fail now, naming the path, when ``folder`` cannot be created or written or its disk has less than
    ``min_free_gib`` GiB free (config ``min_free_gib``); leaves nothing behind. ``key`` is the config key that sets it."""
    folder = Path(folder)
    base = _existing_ancestor(folder)
    fix = f"choose another folder (config {key}) or fix this one"
    if not base.is_dir():
        raise OutputFolderError(f"results folder {folder.absolute()} cannot be created: {base} is a file, not a folder; {fix}")
    try:  # a file made and removed at once: the one test that also holds for root and read-only mounts
        with tempfile.TemporaryFile(dir=base, prefix=".medsynth-write-probe."):
            pass
    except OSError as err:
        raise OutputFolderError(f"results folder {folder.absolute()} is not writable ({base}: {err.strerror or err});"
                                f" {fix}") from None
    free_gib = shutil.disk_usage(base).free / 2**30
    if free_gib < min_free_gib:
        raise OutputFolderError(f"results folder {folder.absolute()} has {free_gib:.2f} GiB free on its disk, less than"
                                f" the {min_free_gib:g} GiB this study asks for (config min_free_gib); free space or {fix}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(df, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as CSV atomically (no index column)."""
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
