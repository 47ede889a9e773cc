"""Hugging Face Hub snapshots (dataset or model repos) into a plain folder, with every LFS file's sha256 checked.

Shared by the dataset download rule (``data/fetch.py``) and the weights rule (``weights/fetch.py``). The
token comes only from the environment variable the registry entry names; it is passed to huggingface_hub
and never logged or written (``token=False`` when there is none, so that a login lying around in
``HF_HOME`` is not sent to a public repo either).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from medsynth.data.download import ChecksumMismatch, DownloadError
from medsynth.fsutil import sha256_file

__all__ = ["hub_token", "snapshot", "snapshot_commit"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_RECORDS = Path(".cache") / "huggingface" / "download"


def hub_token(entry: dict, what: str) -> str | None:
    """The token of ``entry["auth"]["env"]``; a clear error when a required one is not set."""
    auth = entry.get("auth") or {}
    env = auth.get("env")
    token = os.environ.get(env) if env else None
    if env and not token and auth.get("required", True):
        raise DownloadError(
            f"{what} {entry['name']!r} is gated: put your Hugging Face token in the environment variable "
            f"{env} ({auth.get('how', 'accept the terms on its Hub page first')})"
        )
    return token or None


def _verify_lfs_files(entry: dict, what: str, files_dir: Path, since: float) -> None:
    """Check the sha256 of the LFS files huggingface_hub wrote since ``since`` (it checks only their size).

    huggingface_hub records each file of a ``local_dir`` download in
    ``.cache/huggingface/download/<path>.metadata`` (lines: commit, ETag, time written); for an LFS file the
    ETag is the file's sha256. On a mismatch the file and its record are deleted, so that the next run
    downloads it again instead of trusting the record.
    """
    records = files_dir / _RECORDS
    for record in sorted(records.rglob("*.metadata")) if records.is_dir() else []:
        lines = record.read_text().splitlines()
        try:
            etag, written = lines[1].strip(), float(lines[2])
        except (IndexError, ValueError):
            continue
        rel = record.relative_to(records).as_posix()[: -len(".metadata")]
        path = files_dir / rel
        if written < since or not _SHA256_HEX.fullmatch(etag) or not path.is_file():
            continue
        digest = sha256_file(path)
        if digest != etag:
            path.unlink()
            record.unlink()
            raise ChecksumMismatch(
                f"{what} {entry['name']!r}: {rel} arrived with sha256 {digest} but the Hub lists {etag}; "
                "deleted it, run the download again"
            )


def snapshot_commit(files_dir: str | Path) -> str | None:
    """The commit a ``local_dir`` snapshot came from (from huggingface_hub's download records), if known."""
    records = Path(files_dir) / _RECORDS
    commits = {r.read_text().splitlines()[0].strip() for r in records.rglob("*.metadata")} if records.is_dir() else set()
    commits.discard("")
    return commits.pop() if len(commits) == 1 else None


def snapshot(entry: dict, files_dir: Path, repo_type: str, what: str) -> Path:
    """Download ``entry["repo_id"]`` at ``entry["revision"]`` (files matching ``include``) into ``files_dir``.

    Only the entry's endpoint is contacted: huggingface_hub's telemetry is off for the call (with it on,
    building the user agent fetches an agent registry from huggingface.co even when ``endpoint`` names a
    mirror)."""
    from huggingface_hub import constants, snapshot_download

    token = hub_token(entry, what)
    started = time.time()
    telemetry_off = constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        snapshot_download(
            repo_id=entry["repo_id"],
            repo_type=repo_type,
            revision=entry.get("revision"),
            allow_patterns=entry.get("include"),
            local_dir=str(files_dir),
            token=token or False,
            endpoint=entry.get("endpoint"),
            max_workers=int(entry.get("max_workers", 4)),
        )
    finally:
        constants.HF_HUB_DISABLE_TELEMETRY = telemetry_off
    _verify_lfs_files(entry, what, files_dir, since=started)
    return files_dir
