"""Resumable, retrying, checksum-verified HTTP downloads that never leave a partial final file.

A transfer writes ``<dest>.part``; an interrupted transfer is resumed from its length with an HTTP
``Range`` request; the file is renamed to ``dest`` only after its size and checksum are verified.
Tokens travel only in request headers and are never logged: messages show URLs without their
query string.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests
import tenacity
import urllib3
from tqdm.auto import tqdm

from medsynth.fsutil import CHUNK_BYTES, file_digest

log = logging.getLogger(__name__)

#: HTTP statuses worth another try (server busy, gateway trouble, rate limit).
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or for a reason retrying cannot fix)."""


class ChecksumMismatch(DownloadError):
    """The downloaded bytes do not have the expected checksum; nothing was kept."""


class _Incomplete(Exception):
    """The connection ended before the announced number of bytes arrived (retryable)."""


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard to try: number of attempts, exponential backoff and socket timeout (config ``download``; build
    it with :meth:`from_config`, which takes the schema's defaults)."""

    retries: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: float
    progress: bool
    chunk_bytes: int = CHUNK_BYTES  # not a config key: the transfer's read size

    @classmethod
    def from_config(cls, cfg: Mapping | None = None) -> "DownloadPolicy":
        """Build from the ``download`` section of the study config (keys left out take the schema's defaults)."""
        from medsynth.settings import section

        c = section("download", cfg)
        return cls(retries=int(c["retries"]), backoff_s=float(c["backoff_s"]), backoff_max_s=float(c["backoff_max_s"]),
                   timeout_s=float(c["timeout_s"]), progress=bool(c["progress"]))


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment (where signed tokens live)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal: keep its brackets
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scrub(err: object, url: str) -> str:
    """Text of ``err`` without ``url``'s query, fragment and password (requests quotes the full URL)."""
    text, parts = str(err), urlsplit(url)
    for secret in (parts.query, parts.fragment, parts.password):
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    """``"sha256:ab.."``, ``"md5:.."`` or a bare sha256 hex string -> (algorithm, hex)."""
    if not checksum:
        return None
    algorithm, sep, digest = checksum.partition(":")
    if not sep:
        algorithm, digest = "sha256", checksum
    return algorithm.lower(), digest.lower()


def verify_checksum(path: Path, checksum: str | None) -> str | None:
    """Return None when ``path`` matches ``checksum`` (or none is known), else the actual digest."""
    parsed = parse_checksum(checksum)
    if parsed is None:
        return None
    algorithm, expected = parsed
    actual = file_digest(path, algorithm)
    return None if actual == expected else f"{algorithm}:{actual}"


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    checksum: str | None = None,
    headers: dict[str, str] | None = None,
    policy: DownloadPolicy | None = None,
    session: requests.Session | None = None,
) -> Path:
    """Download ``url`` to ``dest``; resume, retry with backoff, verify, then rename into place.

    ``checksum`` is ``"sha256:<hex>"``, ``"md5:<hex>"`` or a bare sha256. An existing ``dest`` with
    the right checksum is kept as is. ``policy``: default the schema's ``download`` settings. Raises
    ``ChecksumMismatch`` (the bad bytes are deleted) or ``DownloadError``.
    """
    policy = policy if policy is not None else DownloadPolicy.from_config()
    dest = Path(dest)
    shown = redact_url(url)
    if dest.exists() and checksum and verify_checksum(dest, checksum) is None:
        log.info("already present and verified: %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = session or requests.Session()
    def announce(state: tenacity.RetryCallState) -> None:
        log.warning("retry %d/%d of %s in %.1f s (%s)", state.attempt_number, policy.retries, shown,
                    state.next_action.sleep, _scrub(state.outcome.exception(), url))

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.retries + 1),
        wait=tenacity.wait_exponential(multiplier=policy.backoff_s, max=policy.backoff_max_s),
        retry=tenacity.retry_if_exception_type(RETRYABLE_ERRORS), before_sleep=announce, sleep=time.sleep)
    try:
        retrying(_transfer, url, part, headers or {}, policy, session, shown)
    except tenacity.RetryError as gave_up:
        last_error = gave_up.last_attempt.exception()
        raise DownloadError(f"giving up on {shown} after {policy.retries + 1} attempts: {_scrub(last_error, url)}") \
            from last_error
    bad = verify_checksum(part, checksum)
    if bad is not None:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"checksum mismatch for {shown}: expected {checksum}, got {bad}; download deleted")
    os.replace(part, dest)
    return dest


class _RetryableStatus(Exception):
    pass


#: what a retry can fix: dropped or timed-out connections, a short body, a 429 / 5xx status
RETRYABLE_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, _Incomplete,
                    _RetryableStatus)


def _transfer(url: str, part: Path, headers: dict, policy: DownloadPolicy, session: requests.Session, shown: str) -> None:
    """One attempt: append to ``part`` from its current length; raise on any incompleteness."""
    offset = part.stat().st_size if part.exists() else 0
    request_headers = dict(headers)
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=request_headers, stream=True, timeout=policy.timeout_s) as resp:
        if resp.status_code == 416 and offset:
            # The part file already holds everything the server has (or is corrupt): start over.
            part.unlink()
            raise _Incomplete("range not satisfiable; restarting from zero")
        if resp.status_code in RETRYABLE_STATUS:
            raise _RetryableStatus(f"HTTP {resp.status_code}")
        if resp.status_code in (401, 403):
            raise DownloadError(
                f"HTTP {resp.status_code} for {shown}: access denied. Check that the token environment "
                "variable named in config/datasets.yaml is set and that your account was granted access."
            )
        if resp.status_code >= 400:
            raise DownloadError(f"HTTP {resp.status_code} for {shown}")
        if offset and resp.status_code == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != offset:
                raise DownloadError(f"server resumed {shown} at byte {start}, expected {offset}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # server ignored the range: full body follows
        length = resp.headers.get("Content-Length")
        expected_total = offset + int(length) if length is not None else None
        written = offset
        with open(part, mode) as f, tqdm(
            total=expected_total, initial=offset, unit="B", unit_scale=True, desc=Path(shown).name,
            disable=not policy.progress, leave=False,
        ) as bar:
            for chunk in _body(resp, policy.chunk_bytes):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if expected_total is not None and written < expected_total:
            raise _Incomplete(f"connection closed at {written} of {expected_total} bytes")


def _body(resp: requests.Response, size: int):
    """Yield the body as it arrives.

    ``iter_content`` waits for whole ``size`` chunks and drops a partly filled one when the
    connection breaks, so a resume would start up to ``size`` bytes too early (and never make
    progress if every connection breaks sooner). ``read1`` hands over every byte received.
    """
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:  # urllib3 < 2.3
        yield from resp.iter_content(chunk_size=size)
        return
    while chunk := read1(size, decode_content=True):
        yield chunk


def _content_range_start(value: str) -> int | None:
    """Start byte of a ``Content-Range: bytes a-b/n`` header."""
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
