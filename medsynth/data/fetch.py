"""Fetch a dataset from its source (one function per registry ``kind``) and inventory its files.

Every fetcher returns the folder holding the dataset's files; ``inventory`` then lists them with
their sizes and sha256, which is the download rule's output and the start of every lineage.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Callable

import pandas as pd
import requests

from medsynth.data.archive import is_archive, safe_extract
from medsynth.data.download import ChecksumMismatch, DownloadError, DownloadPolicy, download_file, verify_checksum
from medsynth.data.hub import snapshot
from medsynth.data.registry import RegistryError, dataset_root
from medsynth.fsutil import sha256_file

log = logging.getLogger(__name__)

DEFAULT_ZENODO_API = "https://zenodo.org/api"
DEFAULT_OSF_API = "https://api.osf.io/v2"


class ManualDownloadRequired(RuntimeError):
    """The dataset needs a step only a person can take (a signed agreement, a login)."""


def auth_headers(entry: dict, what: str = "dataset") -> dict[str, str]:
    """Authorization header from the environment variable the entry names (never from config)."""
    auth = entry.get("auth") or {}
    env = auth.get("env")
    if not env:
        return {}
    token = os.environ.get(env)
    if not token:
        if auth.get("required", True):
            raise DownloadError(
                f"{what} {entry['name']!r} needs an access token in the environment variable {env} "
                f"({auth.get('how', f'see the {what} registry')})"
            )
        return {}
    return {auth.get("header", "Authorization"): f"{auth.get('scheme', 'Bearer')} {token}".strip()}


def _wanted(name: str, entry: dict) -> bool:
    include = entry.get("include")
    return not include or any(fnmatch.fnmatch(name, pattern) for pattern in include)


def _download_and_extract(url: str, rel: str, checksum: str | None, files_dir: Path, entry: dict,
                          policy: DownloadPolicy, headers: dict, session: requests.Session) -> None:
    path = PurePosixPath(rel.replace("\\", "/"))
    if not path.parts or path.is_absolute() or ".." in path.parts:
        # Names come from remote listings (Zenodo keys, OSF paths): keep them inside files_dir.
        raise DownloadError(f"dataset {entry['name']!r}: unsafe file name {rel!r}")
    dest = download_file(url, files_dir / rel, checksum=checksum, headers=headers, policy=policy, session=session)
    if entry.get("extract", True) and is_archive(dest):
        target = dest.with_name(dest.name.split(".")[0])
        if not target.exists():
            safe_extract(dest, target)


def fetch_example(entry: dict, files_dir: Path, policy: DownloadPolicy, base_dir: Path) -> Path:
    """Shipped scans: verify every listed file's checksum where it lies in the repository."""
    root = dataset_root(entry, files_dir.parent.parent, base_dir)
    for case in entry.get("cases", []):
        for key in ("image", "label"):
            rel = case.get(key)
            if not rel:
                continue
            path = root / rel
            if not path.exists():
                raise DownloadError(f"shipped file missing: {path}")
            bad = verify_checksum(path, case.get(f"{key}_sha256"))
            if bad is not None:
                raise ChecksumMismatch(f"shipped file {path} has {bad}, expected {case.get(f'{key}_sha256')}")
    return root


def fetch_local(entry: dict, files_dir: Path, policy: DownloadPolicy, base_dir: Path) -> Path:
    """A user's folder: read in place; it must exist."""
    root = dataset_root(entry, files_dir.parent.parent, base_dir)
    if not root.is_dir():
        raise DownloadError(f"dataset {entry['name']!r}: local folder {root} does not exist (config key 'root')")
    return root


def fetch_manual(entry: dict, files_dir: Path, policy: DownloadPolicy, base_dir: Path) -> Path:
    """A dataset behind an agreement: present when its folder holds the expected files, else explain."""
    root = dataset_root(entry, files_dir.parent.parent, base_dir)
    expect = entry.get("expect") or ["*"]
    present = root.is_dir() and any(any(root.glob(p)) for p in expect)
    if not present:
        steps = entry.get("instructions", "").strip()
        raise ManualDownloadRequired(
            f"dataset {entry['name']!r} must be downloaded by hand into {root} "
            f"(config key datasets[].root); expected files matching {expect}.\n{steps}"
        )
    return root


def fetch_http(entry: dict, files_dir: Path, policy: DownloadPolicy, base_dir: Path) -> Path:
    """Files listed with URL and checksum in the registry."""
    headers = auth_headers(entry)
    session = requests.Session()
    for item in entry.get("files", []):
        rel = item.get("path") or Path(item["url"].split("?")[0]).name
        _download_and_extract(item["url"], rel, item.get("checksum") or item.get("sha256"), files_dir, entry,
                              policy, headers, session)
    return files_dir


def fetch_zenodo(entry: dict, files_dir: Path, policy: DownloadPolicy, base_dir: Path) -> Path:
    """A Zenodo record: its file list (with md5 checksums) comes from the records API."""
    api = entry.get("api", DEFAULT_ZENODO_API).rstrip("/")
    headers = auth_headers(entry)
    session = requests.Session()
    resp = session.get(f"{api}/records/{entry['record']}", headers=headers, timeout=policy.timeout_s)
    if resp.status_code != 200:
        raise DownloadError(f"Zenodo record {entry['record']}: HTTP {resp.status_code}")
    for item in resp.json().get("files", []):
        name = item.get("key") or item.get("filename")
        if not _wanted(name, entry):
            continue
        url = item.get("links", {}).get("self") or item.get("links", {}).get("content")
        _download_and_extract(url, name, item.get("checksum"), files_dir, entry, policy, headers, session)
    return files_dir


def _osf_files(session: requests.Session, url: str, headers: dict, timeout: float):
    """Walk an OSF storage listing (paginated, recursive) and yield its file records."""
    while url:
        resp = session.get(url, headers=headers, timeout=timeout)
        if resp.status_code != 200:
            raise DownloadError(f"OSF listing: HTTP {resp.status_code}")
        body = resp.json()
        for item in body.get("data", []):
            attrs = item.get("attributes", {})
            if attrs.get("kind") == "folder":
                sub = item["relationships"]["files"]["links"]["related"]["href"]
                yield from _osf_files(session, sub, headers, timeout)
            else:
                yield item
        url = (body.get("links") or {}).get("next")


def fetch_osf(entry: dict, files_dir: Path, policy: DownloadPolicy, base_dir: Path) -> Path:
    """An OSF project: files listed by the OSF API, verified by their sha256."""
    api = entry.get("api", DEFAULT_OSF_API).rstrip("/")
    headers = auth_headers(entry)
    session = requests.Session()
    for item in _osf_files(session, f"{api}/nodes/{entry['node']}/files/osfstorage/", headers, policy.timeout_s):
        attrs = item["attributes"]
        rel = attrs["materialized_path"].lstrip("/")
        if not _wanted(rel, entry):
            continue
        sha = (attrs.get("extra", {}).get("hashes") or {}).get("sha256")
        _download_and_extract(item["links"]["download"], rel, sha and f"sha256:{sha}", files_dir, entry, policy,
                              headers, session)
    return files_dir


def fetch_huggingface(entry: dict, files_dir: Path, policy: DownloadPolicy, base_dir: Path) -> Path:
    """A (possibly gated) Hugging Face dataset repo through huggingface_hub; LFS files are checked by sha256."""
    snapshot(entry, files_dir, repo_type="dataset", what="dataset")
    if entry.get("extract", False):
        for archive in sorted(files_dir.rglob("*")):
            if archive.is_file() and is_archive(archive):
                target = archive.with_name(archive.name.split(".")[0])
                if not target.exists():
                    safe_extract(archive, target)
    return files_dir


FETCHERS: dict[str, Callable[[dict, Path, DownloadPolicy, Path], Path]] = {
    "example": fetch_example,
    "local": fetch_local,
    "manual": fetch_manual,
    "http": fetch_http,
    "zenodo": fetch_zenodo,
    "osf": fetch_osf,
    "huggingface": fetch_huggingface,
}


def fetch_dataset(entry: dict, raw_dir: str | Path, policy: DownloadPolicy, base_dir: str | Path = ".") -> Path:
    """Fetch ``entry`` (resolved registry entry) and return the folder holding its files."""
    kind = entry["kind"]
    if kind not in FETCHERS:
        raise RegistryError(f"unknown dataset kind {kind!r}")
    files_dir = Path(raw_dir) / entry["name"] / "files"
    if kind not in ("example", "local", "manual"):
        files_dir.mkdir(parents=True, exist_ok=True)
    return FETCHERS[kind](entry, files_dir, policy, Path(base_dir))


def inventory(root: str | Path, skip_hidden: bool = True) -> pd.DataFrame:
    """Every file under ``root`` with its size and sha256 (partial ``.part`` files excluded)."""
    root = Path(root)
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.name.endswith(".part") or (skip_hidden and any(part.startswith(".") for part in Path(rel).parts)):
            continue
        rows.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return pd.DataFrame(rows, columns=["path", "bytes", "sha256"])
