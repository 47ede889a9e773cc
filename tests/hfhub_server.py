"""A loopback stand-in for the Hugging Face Hub HTTP API (binds 127.0.0.1 on ephemeral ports only).

It emulates what ``huggingface_hub.snapshot_download`` (huggingface_hub 2.x, httpx2 client) calls
for a dataset repo or a model repo (``repo_type``; the routes below are a dataset's, a model's drop the
``datasets`` segment: ``/api/models/<ns>/<name>/...`` and ``/<ns>/<name>/resolve/...``), and nothing else:

* ``GET /api/datasets/<ns>/<name>/revision/<rev>`` (``HfApi.dataset_info``): repo info with ``sha``
  (the commit the revision resolves to), ``gated`` and ``siblings`` (``rfilename``);
* ``GET /api/datasets/<ns>/<name>/tree/<rev>?recursive=true&expand=false`` (``HfApi.list_repo_tree``):
  files (``type``, ``oid`` = git blob sha1, ``size``, ``path``, and ``lfs`` {``oid`` = sha256, ``size``,
  ``pointerSize``} for LFS files) and folders, paginated with a ``Link: <...>; rel="next"`` header;
* ``HEAD``/``GET /datasets/<ns>/<name>/resolve/<rev>/<path>`` (``get_hf_file_metadata``, ``http_get``):
  - a regular git file: 200 with ``ETag`` (git blob sha1), ``X-Repo-Commit`` and ``Content-Length``;
  - an LFS file: 302 to a signed URL on a second loopback server (the "CDN", another origin), with
    ``X-Linked-Etag`` (sha256), ``X-Linked-Size``, ``X-Repo-Commit`` and the pointer's ``ETag``;
* ``GET /<blob>?X-Amz-Signature=...`` on the CDN: the bytes, only with a valid signature and, like S3,
  only *without* an ``Authorization`` header (400 otherwise: a second auth mechanism). ``cdn_tamper``
  makes it send other bytes (a corrupted blob) while the Hub keeps advertising the original sha256.

No Xet headers (``X-Xet-Hash``, ``X-Xet-Refresh-Route``, ``Link: rel="xet-auth"``) and no ``xetHash``
tree field are ever sent, so the client can only use plain HTTP.

A gated repo answers like the Hub: no ``Authorization`` -> 401 ``X-Error-Code: GatedRepo``; an unknown
token -> 401 ``X-Error-Message: Invalid credentials in Authorization header``; a known token whose user
has not been granted access -> 403 ``X-Error-Code: GatedRepo``. Error bodies never echo what was sent.

Every request is recorded (server, method, path, headers) in ``requests``; requests to a route the
stand-in does not know are also listed in ``unknown`` (and answered 404).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class RepoFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:  # git oid of what git stores: the pointer for LFS files
        return git_blob_sha1(lfs_pointer(self.data) if self.lfs else self.data)

    def tree_entry(self) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": len(self.data), "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(lfs_pointer(self.data))}
        return entry


@dataclass
class Seen:
    server: str  # "hub" | "cdn"
    method: str
    path: str  # with the query string
    headers: dict[str, str]

    @property
    def route(self) -> str:
        return unquote(urlsplit(self.path).path)

    @property
    def authorization(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), None)


@dataclass
class FakeHub:
    repo_id: str
    files: dict[str, RepoFile] = field(default_factory=dict)
    repo_type: str = "dataset"  # "dataset" | "model"
    commit: str = "a" * 40
    gated: bool = True
    granted_tokens: set[str] = field(default_factory=set)  # users who accepted the terms
    known_tokens: set[str] = field(default_factory=set)  # valid tokens of users without access
    page_size: int = 1000  # tree entries per page (the Hub uses 1000)
    cdn_secret: bytes = b"cdn-signing-key"
    cdn_tamper: dict[str, bytes] = field(default_factory=dict)  # repo path -> bytes the CDN sends instead
    requests: list[Seen] = field(default_factory=list)
    unknown: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hub_port: int = 0
    cdn_port: int = 0

    # -- setup -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    @property
    def api_prefix(self) -> str:
        """``/api/datasets/<repo>`` or ``/api/models/<repo>``."""
        return f"/api/{self.repo_type}s/{self.repo_id}"

    @property
    def resolve_prefix(self) -> str:
        """``/datasets/<repo>/resolve`` or, for a model, ``/<repo>/resolve``."""
        return f"{'/datasets' if self.repo_type == 'dataset' else ''}/{self.repo_id}/resolve"

    def add_file(self, path: str, data: bytes, lfs: bool = False) -> RepoFile:
        self.files[path] = RepoFile(path, data, lfs)
        return self.files[path]

    # -- inspection --------------------------------------------------------------------------
    def seen(self, server: str | None = None, method: str | None = None, prefix: str = "") -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if (server is None or r.server == server)
                    and (method is None or r.method == method) and r.route.startswith(prefix)]

    def seen_for_file(self, path: str) -> list[Seen]:
        """Every request that concerns one repo file: its /resolve/ URL on the hub, its blob on the CDN."""
        f = self.files[path]
        resolve = re.compile(rf"{re.escape(self.resolve_prefix)}/[^/]+/{re.escape(path)}")
        return [r for r in self.seen() if (r.server == "hub" and resolve.fullmatch(r.route))
                or (r.server == "cdn" and r.route.endswith(f"/{f.sha256}"))]

    # -- helpers for the handlers ------------------------------------------------------------
    def signature(self, blob: str) -> str:
        return hmac.new(self.cdn_secret, blob.encode(), hashlib.sha256).hexdigest()

    def signed_url(self, f: RepoFile) -> str:
        query = urlencode({"X-Amz-Expires": "3600", "X-Amz-Signature": self.signature(f.sha256)})
        return f"{self.cdn}/repos/{self.repo_id.replace('/', '-')}/{f.sha256}?{query}"

    def folders(self) -> list[str]:
        out = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(out)

    def tree(self) -> list[dict]:
        entries = [{"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d}
                   for d in self.folders()]
        entries += [f.tree_entry() for f in sorted(self.files.values(), key=lambda f: f.path)]
        return entries


_JSON = {"Content-Type": "application/json; charset=utf-8"}


def _make_handler(state: FakeHub, server: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
                  content_length: int | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, status: int, document: object, headers: dict | None = None) -> None:
            self._send(status, json.dumps(document).encode(), {**_JSON, **(headers or {})})

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._json(status, {"error": message}, headers)

        def _record(self) -> Seen:
            seen = Seen(server, self.command, self.path, dict(self.headers.items()))
            with state.lock:
                state.requests.append(seen)
            return seen

        def _unknown(self, seen: Seen) -> None:
            with state.lock:
                state.unknown.append(seen)
            self._error(404, "Not Found")

        # -- hub ---------------------------------------------------------------------------
        def _authorize(self, seen: Seen) -> bool:
            """Gate like the Hub; answers the error and returns False when the request may not proceed."""
            if not state.gated:
                return True
            auth = seen.authorization
            kind = state.repo_type
            if auth is None:
                self._error(401, f"Access to {kind} {state.repo_id} is restricted. You must have access to it "
                                 "and be authenticated to access it. Please log in.", "GatedRepo")
                return False
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            if token in state.granted_tokens:
                return True
            if token in state.known_tokens:
                self._error(403, f"Access to {kind} {state.repo_id} is restricted and you are not in the "
                                 f"authorized list. Visit the {kind} page to ask for access.", "GatedRepo")
                return False
            self._error(401, "Invalid credentials in Authorization header")
            return False

        def _revision(self, rev: str) -> bool:
            if rev in ("main", state.commit):
                return True
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return False

        def _hub(self, seen: Seen) -> None:
            split = urlsplit(self.path)
            path = unquote(split.path)
            repo = state.repo_id
            api, resolve = re.escape(state.api_prefix), re.escape(state.resolve_prefix)
            if m := re.fullmatch(rf"{api}/revision/([^/]+)", path):
                if not self._authorize(seen) or not self._revision(m.group(1)):
                    return
                return self._json(200, {
                    "_id": "66f0c0ffee", "id": repo, "author": repo.split("/")[0], "sha": state.commit,
                    "lastModified": "2024-10-01T12:00:00.000Z", "createdAt": "2024-03-01T12:00:00.000Z",
                    "private": False, "gated": "manual" if state.gated else False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": [], "cardData": {},
                    "siblings": [{"rfilename": p} for p in sorted(state.files)],
                    "usedStorage": sum(len(f.data) for f in state.files.values()),
                })
            if m := re.fullmatch(rf"{api}/tree/([^/]+)", path):
                if not self._authorize(seen) or not self._revision(m.group(1)):
                    return
                query = parse_qs(split.query)
                entries = state.tree()
                if query.get("recursive", ["false"])[0].lower() != "true":
                    entries = [e for e in entries if "/" not in e["path"]]
                start = int(query.get("cursor", ["0"])[0])
                page = entries[start:start + state.page_size]
                headers = {}
                if start + state.page_size < len(entries):
                    nxt = dict(query)
                    nxt["cursor"] = [str(start + state.page_size)]
                    url = f"{state.endpoint}{split.path}?{urlencode(nxt, doseq=True)}"
                    headers["Link"] = f'<{url}>; rel="next"'
                return self._json(200, page, headers)
            if m := re.fullmatch(rf"{resolve}/([^/]+)/(.+)", path):
                if self.command not in ("HEAD", "GET"):
                    return self._unknown(seen)
                if not self._authorize(seen) or not self._revision(m.group(1)):
                    return
                f = state.files.get(m.group(2))
                if f is None:
                    return self._error(404, "Entry not found", "EntryNotFound")
                common = {"X-Repo-Commit": state.commit, "Accept-Ranges": "bytes",
                          "Content-Disposition": f'inline; filename="{f.path.rsplit("/", 1)[-1]}"'}
                if f.lfs:
                    return self._send(302, b"", {
                        **common, "Location": state.signed_url(f), "ETag": f'"{f.blob_id}"',
                        "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)),
                    })
                return self._send(200, f.data, {**common, "ETag": f'"{f.blob_id}"',
                                                "Content-Type": "text/plain; charset=utf-8"})
            return self._unknown(seen)

        # -- cdn ---------------------------------------------------------------------------
        def _cdn(self, seen: Seen) -> None:
            split = urlsplit(self.path)
            m = re.fullmatch(rf"/repos/{re.escape(state.repo_id.replace('/', '-'))}/([0-9a-f]{{64}})",
                             unquote(split.path))
            f = next((f for f in state.files.values() if m and f.lfs and f.sha256 == m.group(1)), None)
            if f is None or self.command != "GET":
                return self._unknown(seen)
            if seen.authorization is not None:  # S3: "Only one auth mechanism allowed"
                return self._send(400, b"<Error><Code>InvalidArgument</Code></Error>",
                                  {"Content-Type": "application/xml"})
            signature = parse_qs(split.query).get("X-Amz-Signature", [""])[0]
            if not hmac.compare_digest(signature, state.signature(f.sha256)):
                return self._send(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>",
                                  {"Content-Type": "application/xml"})
            body = state.cdn_tamper.get(f.path, f.data)
            data, status = body, 200
            headers = {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            r = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
            if r:
                start = int(r.group(1))
                end = min(int(r.group(2)) if r.group(2) else len(data) - 1, len(data) - 1)
                status, data = 206, data[start:end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            return self._send(status, data, headers)

        def _dispatch(self) -> None:
            seen = self._record()
            (self._hub if server == "hub" else self._cdn)(seen)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    return Handler


class RunningHub:
    """Context manager: serve ``FakeHub`` (hub + CDN) from daemon threads, stop both on exit."""

    def __init__(self, state: FakeHub):
        self.state = state
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state, name)) for name in ("hub", "cdn")]
        for httpd in self.servers:
            httpd.daemon_threads = True
        state.hub_port = self.servers[0].server_address[1]
        state.cdn_port = self.servers[1].server_address[1]
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                        for s in self.servers]

    def __enter__(self) -> FakeHub:
        for thread in self.threads:
            thread.start()
        return self.state

    def __exit__(self, *exc) -> None:
        for httpd in self.servers:
            httpd.shutdown()
            httpd.server_close()
        for thread in self.threads:
            thread.join(timeout=5)


__all__ = ["FakeHub", "RepoFile", "RunningHub", "Seen", "git_blob_sha1", "lfs_pointer"]
