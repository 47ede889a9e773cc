"""A loopback HTTP server for download tests (binds 127.0.0.1 on an ephemeral port only).

Files are registered with ``add_file`` and served with HTTP Range support (206 + Content-Range,
416 past the end). Per-file behaviours emulate a hostile network:

* ``drop_first``: the first response announces the full Content-Length, sends half of the body
  and closes the socket, so the client has to resume with a Range request;
* ``drop_after``: every response announces the full Content-Length but hangs up after at most
  this many body bytes (a link that breaks over and over);
* ``fail_times``: the first N requests get ``503 Service Unavailable``;
* ``ignore_range``: Range headers are ignored (always 200 with the whole body);
* ``token``: the request needs ``Authorization: Bearer <token>`` (401 otherwise);
* ``gzip``: the body is sent gzip-compressed with ``Content-Encoding: gzip`` when the client accepts it;
* ``chunked``: the body is sent with ``Transfer-Encoding: chunked`` (no Content-Length).

``add_json`` registers a JSON document; ``add_zenodo_record`` and ``add_osf_node`` build the
Zenodo records API and the (paginated, recursive) OSF storage API on top of it. Every request is
recorded (method, path, headers) in ``requests``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Served:
    data: bytes
    drop_first: bool = False
    drop_after: int | None = None
    fail_times: int = 0
    ignore_range: bool = False
    token: str | None = None
    gzip: bool = False
    chunked: bool = False
    hits: int = 0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def range_start(self) -> int | None:
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        return int(m.group(1)) if m else None


@dataclass
class LoopbackServer:
    host: str = "127.0.0.1"
    files: dict[str, Served] = field(default_factory=dict)
    json_routes: dict[str, object] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    # -- setup -------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def add_file(self, path: str, data: bytes, **behaviour) -> str:
        self.files[path] = Served(data, **behaviour)
        return self.url(path)

    def add_json(self, path: str, document: object) -> str:
        self.json_routes[path] = document
        return self.url(path)

    def add_zenodo_record(self, record: str, files: dict[str, bytes]) -> None:
        """``GET /api/records/<record>`` listing ``files`` with md5 checksums and download links."""
        items = []
        for name, data in files.items():
            url = self.add_file(f"/api/records/{record}/files/{name}/content", data)
            items.append({"key": name, "size": len(data), "checksum": "md5:" + hashlib.md5(data).hexdigest(),
                          "links": {"self": url}})
        self.add_json(f"/api/records/{record}", {"id": record, "files": items})

    def add_osf_node(self, node: str, files: dict[str, bytes], page_size: int = 2) -> None:
        """``GET /v2/nodes/<node>/files/osfstorage/``: ``files`` keys are paths ("sub/x.bin" makes a folder)."""
        self._osf_listing(node, "", files, page_size)

    def _osf_listing(self, node: str, prefix: str, files: dict[str, bytes], page_size: int) -> str:
        folder_id = f"{prefix.strip('/').replace('/', '_')}id/" if prefix else ""
        listing = f"/v2/nodes/{node}/files/osfstorage/{folder_id}"
        items: list[dict] = []
        subfolders: dict[str, dict[str, bytes]] = {}
        for rel, data in files.items():
            head, sep, rest = rel.partition("/")
            if sep:
                subfolders.setdefault(head, {})[rest] = data
                continue
            materialized = f"/{prefix}{rel}"
            download = self.add_file(f"/download/{node}{materialized}", data)
            items.append({
                "type": "files",
                "attributes": {"kind": "file", "name": rel, "materialized_path": materialized, "size": len(data),
                               "extra": {"hashes": {"sha256": hashlib.sha256(data).hexdigest(),
                                                    "md5": hashlib.md5(data).hexdigest()}}},
                "links": {"download": download},
            })
        for name, sub in subfolders.items():
            href = self.url(self._osf_listing(node, f"{prefix}{name}/", sub, page_size))
            items.insert(0, {
                "type": "files",
                "attributes": {"kind": "folder", "name": name, "materialized_path": f"/{prefix}{name}/"},
                "relationships": {"files": {"links": {"related": {"href": href}}}},
            })
        pages = [items[i:i + page_size] for i in range(0, len(items), page_size)] or [[]]
        for number, page in enumerate(pages, start=1):
            path = listing if number == 1 else f"{listing}?page={number}"
            nxt = self.url(f"{listing}?page={number + 1}") if number < len(pages) else None
            self.add_json(path, {"data": page, "links": {"next": nxt}, "meta": {"total": len(items)}})
        return listing

    # -- inspection --------------------------------------------------------------------------
    def seen(self, path: str) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if urlsplit(r.path).path == path]


def make_handler(state: LoopbackServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            with state.lock:
                state.requests.append(Seen(self.command, self.path, dict(self.headers.items())))
            if self.path in state.json_routes:
                body = json.dumps(state.json_routes[self.path]).encode()
                return self._reply(200, body, {"Content-Type": "application/json"})
            served = state.files.get(urlsplit(self.path).path)
            if served is None:
                return self._reply(404, b"not found")
            with state.lock:
                served.hits += 1
                hit = served.hits
            if served.token is not None and self.headers.get("Authorization") != f"Bearer {served.token}":
                return self._reply(401, b"unauthorized", {"WWW-Authenticate": "Bearer"})
            if hit <= served.fail_times:
                return self._reply(503, b"busy", {"Retry-After": "0"})
            data, status, headers = served.data, 200, {"Accept-Ranges": "bytes"}
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
            if m and not served.ignore_range:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                if start >= len(data):
                    return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                end = min(end, len(data) - 1)
                status, data = 206, data[start:end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(served.data)}"
            if served.gzip and "gzip" in self.headers.get("Accept-Encoding", "") and status == 200:
                data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
            if served.chunked:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(data), 10_000):
                    piece = data[i:i + 10_000]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            cut = None
            if served.drop_first and hit == 1:
                cut = len(data) // 2
            elif served.drop_after is not None and len(data) > served.drop_after:
                cut = served.drop_after
            if cut is not None:
                # Announce everything, send part of it, then hang up.
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            return self._reply(status, data, headers)

    return Handler


class RunningServer:
    """Context manager: start ``LoopbackServer`` in a daemon thread, stop it on exit."""

    def __init__(self):
        self.state = LoopbackServer()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.httpd.daemon_threads = True
        self.state.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self.state

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
