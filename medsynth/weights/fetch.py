"""The weights rule's work: fetch one registry model into its folder, verify it, and describe it.

Downloads go through the dataset download layer (``data/download.py``: resume from ``.part``, retries
with backoff, checksum, atomic rename, tokens only in headers) or through huggingface_hub
(``data/hub.py``: every LFS file's sha256 checked). The registry's own ``sha256`` pins are verified
afterwards for every kind; a file that fails is deleted, so that the next run fetches it again.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from pathlib import Path

import pandas as pd
import requests

from medsynth.data.archive import is_archive, safe_extract
from medsynth.data.download import ChecksumMismatch, DownloadError, DownloadPolicy, download_file
from medsynth.data.fetch import ManualDownloadRequired, auth_headers, inventory
from medsynth.data.hub import snapshot, snapshot_commit
from medsynth.fsutil import sha256_file

__all__ = ["fetch_model", "source_record", "verify_pins"]


def _fetch_huggingface(entry: dict, files_dir: Path, policy: DownloadPolicy) -> Path:
    return snapshot(entry, files_dir, repo_type=entry.get("repo_type", "model"), what="model")


def _fetch_http(entry: dict, files_dir: Path, policy: DownloadPolicy) -> Path:
    headers = auth_headers(entry, what="model")
    session = requests.Session()
    for item in entry["files"]:
        rel = Path(item["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise DownloadError(f"model {entry['name']!r}: unsafe file name {item['path']!r}")
        sha = item.get("sha256")
        dest = download_file(item["url"], files_dir / rel, checksum=sha and f"sha256:{sha}", headers=headers,
                             policy=policy, session=session)
        if item.get("extract") and is_archive(dest):
            target = dest.with_name(dest.name.split(".")[0])
            if not target.exists():
                safe_extract(dest, target)
    return files_dir


def _fetch_manual(entry: dict, files_dir: Path, policy: DownloadPolicy) -> Path:
    expect = entry["expect"]
    missing = [pattern for pattern in expect if not any(files_dir.glob(pattern))]
    if missing:
        raise ManualDownloadRequired(
            f"model {entry['name']!r} must be put in place by hand: {files_dir} needs files matching "
            f"{', '.join(missing)}.\n{entry['instructions'].strip()}"
        )
    return files_dir


_FETCHERS = {"huggingface": _fetch_huggingface, "http": _fetch_http, "manual": _fetch_manual}


def _pins(entry: dict) -> dict[str, str]:
    pins = dict(entry.get("sha256") or {})
    pins.update({f["path"]: f["sha256"] for f in entry.get("files") or [] if f.get("sha256")})
    return pins


def verify_pins(entry: dict, files_dir: Path) -> None:
    """Check every file the registry pins by sha256 (or by the sha256 prefix a release file's name carries,
    torch.hub's convention, e.g. ``unet_r231-d5d2fc3d.pth``); delete a mismatching one and raise."""
    prefixes = {f["path"]: f["sha256_prefix"] for f in entry.get("files") or [] if f.get("sha256_prefix")}
    for rel, expected in {**prefixes, **_pins(entry)}.items():
        path = files_dir / rel
        if not path.is_file():
            raise DownloadError(f"model {entry['name']!r}: {rel} (pinned in the model registry) was not fetched")
        actual = sha256_file(path)
        if not actual.startswith(expected.lower()) or (rel not in prefixes and actual != expected.lower()):
            path.unlink()
            raise ChecksumMismatch(f"model {entry['name']!r}: {rel} has sha256 {actual}, the registry pins "
                                   f"{expected}; deleted it")


def fetch_model(entry: dict, files_dir: str | Path, policy: DownloadPolicy) -> pd.DataFrame:
    """Fetch (or, if already there, re-verify) ``entry`` into ``files_dir``; its inventory (path, bytes, sha256)."""
    files_dir = Path(files_dir)
    files_dir.mkdir(parents=True, exist_ok=True)
    _FETCHERS[entry["kind"]](entry, files_dir, policy)
    verify_pins(entry, files_dir)
    files = inventory(files_dir)
    include = entry.get("include")
    if entry["kind"] == "huggingface" and include:
        # files of an earlier, wider include stay on disk but are not this entry's
        files = files[[any(fnmatch.fnmatch(p, pat) for pat in include) for p in files["path"]]]
    if files.empty:
        raise DownloadError(f"model {entry['name']!r}: nothing was fetched into {files_dir}")
    return files.reset_index(drop=True)


def source_record(entry: dict, files_dir: str | Path, files: pd.DataFrame) -> dict:
    """Where the model came from: the registry facts and, for a Hub repo, the commit it resolved to."""
    keys = ("title", "kind", "repo_id", "revision", "licence", "access", "layout")
    record = {"name": entry["name"], **{k: entry[k] for k in keys if entry.get(k) is not None}}
    if entry["kind"] == "huggingface":
        record["commit"] = snapshot_commit(files_dir)
    if entry["kind"] == "http":
        record["urls"] = {f["path"]: f["url"].split("?")[0] for f in entry["files"]}
    record["files"] = int(len(files))
    record["bytes"] = int(files["bytes"].sum())
    record["pinned_sha256"] = sorted(_pins(entry))
    record["fetched_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return record
