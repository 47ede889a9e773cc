"""Downloads, safe extraction and dataset fetchers against a loopback HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import io
import logging
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from httpserver import RunningServer  # noqa: E402

from medsynth.data.archive import UnsafeArchiveError, safe_extract  # noqa: E402
from medsynth.data.download import (  # noqa: E402
    ChecksumMismatch,
    DownloadError,
    DownloadPolicy,
    download_file,
    parse_checksum,
    redact_url,
)
from medsynth.data.fetch import (  # noqa: E402
    ManualDownloadRequired,
    auth_headers,
    fetch_dataset,
    fetch_http,
    fetch_manual,
    fetch_osf,
    fetch_zenodo,
    inventory,
)

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(300_000))  # 300 kB, not periodic in 256
POLICY = DownloadPolicy(retries=3, backoff_s=0.01, backoff_max_s=0.02, timeout_s=5.0, progress=False)
TOKEN = "s3cr3t-T0KEN-value-4242"
TOKEN_ENV = "MEDSYNTH_TEST_TOKEN"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def server():
    with RunningServer() as state:
        yield state


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------------------------
# download_file
# --------------------------------------------------------------------------------------------

def test_plain_download_verifies_sha256(server, tmp_path):
    url = server.add_file("/f.bin", PAYLOAD)
    dest = download_file(url, tmp_path / "sub" / "f.bin", checksum=f"sha256:{sha256(PAYLOAD)}", policy=POLICY)
    assert dest == tmp_path / "sub" / "f.bin"
    assert dest.read_bytes() == PAYLOAD
    assert not part_of(dest).exists()
    assert server.seen("/f.bin")[0].range_start is None


def test_resume_from_existing_part_sends_range(server, tmp_path):
    url = server.add_file("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    n = 123_457
    part_of(dest).write_bytes(PAYLOAD[:n])
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY)
    seen = server.seen("/f.bin")
    assert len(seen) == 1
    assert seen[0].headers.get("Range") == f"bytes={n}-"
    assert dest.read_bytes() == PAYLOAD
    assert not part_of(dest).exists()


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    url = server.add_file("/drop.bin", PAYLOAD, drop_first=True)
    dest = tmp_path / "drop.bin"
    download_file(url, dest, checksum=f"sha256:{sha256(PAYLOAD)}", policy=POLICY)
    seen = server.seen("/drop.bin")
    assert len(seen) == 2, [s.headers for s in seen]
    assert seen[0].range_start is None
    # The second request resumed right after the bytes the first one delivered (half the payload).
    assert seen[1].range_start == len(PAYLOAD) // 2
    assert dest.read_bytes() == PAYLOAD
    assert not part_of(dest).exists()


def test_link_that_keeps_breaking_still_makes_progress(server, tmp_path):
    # Each connection carries 70 kB of 300 kB (less than one 1 MiB chunk): every byte must be kept.
    url = server.add_file("/flaky.bin", PAYLOAD, drop_after=70_000)
    dest = tmp_path / "flaky.bin"
    policy = DownloadPolicy(retries=6, backoff_s=0.001, backoff_max_s=0.001, timeout_s=5.0, progress=False)
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=policy)
    assert [s.range_start for s in server.seen("/flaky.bin")] == [None, 70_000, 140_000, 210_000, 280_000]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_part_for_later_resume(server, tmp_path):
    url = server.add_file("/flaky.bin", PAYLOAD, drop_after=100_000)
    dest = tmp_path / "flaky.bin"
    policy = DownloadPolicy.from_config({"retries": 1, "backoff_s": 0.001, "timeout_s": 5.0, "progress": False})
    with pytest.raises(DownloadError, match="giving up"):
        download_file(url, dest, checksum=sha256(PAYLOAD), policy=policy)
    assert not dest.exists()
    assert part_of(dest).read_bytes() == PAYLOAD[:200_000]
    server.files["/flaky.bin"].drop_after = None  # the link recovers
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=policy)
    assert server.seen("/flaky.bin")[-1].range_start == 200_000
    assert dest.read_bytes() == PAYLOAD and not part_of(dest).exists()


@pytest.mark.parametrize("mode", ["gzip", "chunked"])
def test_content_and_transfer_encodings(server, tmp_path, mode):
    url = server.add_file(f"/{mode}.csv", PAYLOAD, **{mode: True})
    dest = download_file(url, tmp_path / f"{mode}.csv", checksum=sha256(PAYLOAD), policy=POLICY)
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_does_not_duplicate_bytes(server, tmp_path):
    url = server.add_file("/norange.bin", PAYLOAD, ignore_range=True)
    dest = tmp_path / "norange.bin"
    part_of(dest).write_bytes(PAYLOAD[:50_000])
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY)
    assert server.seen("/norange.bin")[0].range_start == 50_000  # asked, but got 200 + full body
    assert dest.read_bytes() == PAYLOAD
    assert not part_of(dest).exists()


def test_complete_part_file_416_restarts(server, tmp_path):
    url = server.add_file("/full.bin", PAYLOAD)
    dest = tmp_path / "full.bin"
    part_of(dest).write_bytes(PAYLOAD + b"extra")  # longer than the file: 416 Range Not Satisfiable
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY)
    assert [s.range_start for s in server.seen("/full.bin")] == [len(PAYLOAD) + 5, None]
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_everything(server, tmp_path):
    url = server.add_file("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    wrong = sha256(b"something else")
    with pytest.raises(ChecksumMismatch, match="checksum mismatch") as info:
        download_file(url, dest, checksum=f"sha256:{wrong}", policy=POLICY)
    assert isinstance(info.value, DownloadError)
    assert sha256(PAYLOAD) in str(info.value)  # reports what arrived
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_corrupt_part_file_is_detected_and_removed(server, tmp_path):
    url = server.add_file("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    part_of(dest).write_bytes(b"\0" * 1000)  # wrong prefix: resumed result cannot verify
    with pytest.raises(ChecksumMismatch):
        download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY)
    assert not dest.exists() and not part_of(dest).exists()
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY)  # the next attempt starts clean
    assert dest.read_bytes() == PAYLOAD


def test_md5_checksum_form(server, tmp_path):
    url = server.add_file("/f.bin", PAYLOAD)
    dest = download_file(url, tmp_path / "f.bin", checksum=f"md5:{md5(PAYLOAD)}", policy=POLICY)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(ChecksumMismatch):
        download_file(url, tmp_path / "g.bin", checksum=f"md5:{md5(b'x')}", policy=POLICY)
    assert not (tmp_path / "g.bin").exists() and not (tmp_path / "g.bin.part").exists()


def test_parse_checksum_forms():
    assert parse_checksum(None) is None
    assert parse_checksum("") is None
    assert parse_checksum("ABCDEF") == ("sha256", "abcdef")
    assert parse_checksum("SHA256:ABCDEF") == ("sha256", "abcdef")
    assert parse_checksum("md5:0123") == ("md5", "0123")


def test_retries_503_then_succeeds(server, tmp_path):
    url = server.add_file("/busy.bin", PAYLOAD, fail_times=2)
    dest = download_file(url, tmp_path / "busy.bin", checksum=sha256(PAYLOAD), policy=POLICY)
    assert len(server.seen("/busy.bin")) == 3
    assert dest.read_bytes() == PAYLOAD


def test_gives_up_after_retries(server, tmp_path, caplog):
    url = server.add_file("/down.bin", PAYLOAD, fail_times=1000)
    dest = tmp_path / "down.bin"
    policy = DownloadPolicy(retries=2, backoff_s=0.01, backoff_max_s=0.01, timeout_s=5.0, progress=False)
    secret_url = url + "?signature=QUERYSECRET"
    caplog.set_level(logging.INFO, logger="medsynth")
    with pytest.raises(DownloadError, match="giving up") as info:
        download_file(secret_url, dest, checksum=sha256(PAYLOAD), policy=policy)
    assert not isinstance(info.value, ChecksumMismatch)
    assert "503" in str(info.value)
    assert "QUERYSECRET" not in str(info.value)
    assert "QUERYSECRET" not in caplog.text
    assert len(server.seen("/down.bin")) == 3  # 1 + 2 retries
    assert not dest.exists() and not part_of(dest).exists()


def test_unreachable_server_gives_up_without_showing_the_query(tmp_path, caplog):
    with RunningServer() as state:  # started and stopped: its port now refuses connections
        url = state.url("/gone.bin") + "?X-Signature=QUERYSECRET"
    policy = DownloadPolicy.from_config({"retries": 1, "backoff_s": 0.01, "timeout_s": 2.0, "progress": False})
    caplog.set_level(logging.INFO, logger="medsynth")
    with pytest.raises(DownloadError, match="giving up") as info:
        download_file(url, tmp_path / "gone.bin", policy=policy)
    assert "gone.bin" in str(info.value)
    assert "QUERYSECRET" not in str(info.value)
    assert "retry 1/1" in caplog.text and "QUERYSECRET" not in caplog.text
    assert not (tmp_path / "gone.bin").exists()


def test_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("/missing.bin"), tmp_path / "m.bin", policy=POLICY)
    assert len(server.seen("/missing.bin")) == 1
    assert not (tmp_path / "m.bin").exists()


def test_existing_verified_dest_is_not_downloaded_again(server, tmp_path):
    url = server.add_file("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY)
    before = len(server.requests)
    mtime = dest.stat().st_mtime_ns
    assert download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY) == dest
    assert len(server.requests) == before
    assert dest.stat().st_mtime_ns == mtime


def test_existing_dest_with_wrong_content_is_replaced(server, tmp_path):
    url = server.add_file("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    download_file(url, dest, checksum=sha256(PAYLOAD), policy=POLICY)
    assert len(server.seen("/f.bin")) == 1
    assert dest.read_bytes() == PAYLOAD


# --------------------------------------------------------------------------------------------
# authentication
# --------------------------------------------------------------------------------------------

def gated_entry(server, **auth) -> dict:
    url = server.add_file("/gated/data.bin", PAYLOAD, token=TOKEN)
    return {"name": "gated", "kind": "http", "auth": {"env": TOKEN_ENV, **auth},
            "files": [{"url": url, "sha256": sha256(PAYLOAD)}]}


def test_auth_headers_requires_the_env_variable(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    entry = {"name": "gated", "auth": {"env": TOKEN_ENV, "how": "request access at the portal"}}
    with pytest.raises(DownloadError, match=TOKEN_ENV) as info:
        auth_headers(entry)
    assert "request access at the portal" in str(info.value)
    assert auth_headers({"name": "open"}) == {}
    assert auth_headers({"name": "opt", "auth": {"env": TOKEN_ENV, "required": False}}) == {}
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert auth_headers(entry) == {"Authorization": f"Bearer {TOKEN}"}
    custom = {"name": "c", "auth": {"env": TOKEN_ENV, "header": "X-Api-Key", "scheme": ""}}
    assert auth_headers(custom) == {"X-Api-Key": TOKEN}


def test_401_without_token_is_a_helpful_error(server, tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    entry = gated_entry(server, required=False)  # no token: request goes out without one
    with pytest.raises(DownloadError) as info:
        fetch_http(entry, tmp_path / "files", POLICY, tmp_path)
    message = str(info.value)
    assert "401" in message and "access denied" in message and "token" in message
    assert len(server.seen("/gated/data.bin")) == 1  # 401 is not retried
    assert not (tmp_path / "files" / "data.bin").exists()
    assert "Authorization" not in server.seen("/gated/data.bin")[0].headers


def test_token_from_env_is_sent_and_never_shown(server, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    entry = gated_entry(server)
    files_dir = tmp_path / "files"
    fetch_http(entry, files_dir, POLICY, tmp_path)
    assert (files_dir / "data.bin").read_bytes() == PAYLOAD
    assert server.seen("/gated/data.bin")[0].headers["Authorization"] == f"Bearer {TOKEN}"

    # A wrong token: the error names the problem but never echoes what was sent.
    monkeypatch.setenv(TOKEN_ENV, TOKEN + "-wrong")
    (files_dir / "data.bin").unlink()
    with pytest.raises(DownloadError) as info:
        fetch_http(entry, files_dir, POLICY, tmp_path)
    assert "401" in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)

    # A token-bearing download that needs retries (503, dropped connection) logs warnings only.
    flaky = server.add_file("/gated/flaky.bin", PAYLOAD, token=TOKEN, fail_times=1, drop_first=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    download_file(flaky, tmp_path / "flaky.bin", checksum=sha256(PAYLOAD), headers=auth_headers(entry),
                  policy=POLICY)

    captured = capsys.readouterr()
    assert TOKEN not in caplog.text
    assert all(TOKEN not in str(r.args) for r in caplog.records)
    assert TOKEN not in captured.err and TOKEN not in captured.out


# --------------------------------------------------------------------------------------------
# safe_extract
# --------------------------------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[str, str, bytes | str]], mode: str = "w") -> Path:
    """members: (kind, name, data-or-linkname) with kind in file/symlink/dir."""
    with tarfile.open(path, mode) as tf:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tf.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
                tf.addfile(info)
            else:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
    return path


def _zip(path: Path, members: list[tuple[str, bytes]], symlink: tuple[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, symlink[1])
    return path


def _escaped(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith("escape")]


def _unsafe_archives(base: Path) -> dict[str, Path]:
    """Archives under ``base`` that would write to ``base``/escape* or elsewhere outside the target."""
    outside = base / "outside"
    outside.mkdir()
    return {
        "tar-absolute": _tar(base / "abs.tar", [("file", "ok.txt", b"ok"),
                                                ("file", str(base / "escape_abs"), b"pwned")]),
        "tar-dotdot": _tar(base / "dotdot.tar", [("file", "ok.txt", b"ok"), ("file", "../escape", b"pwned")]),
        "tar-dotdot-nested": _tar(base / "nested.tgz", [("file", "a/../../escape", b"pwned")], mode="w:gz"),
        "tar-symlink-abs": _tar(base / "link_abs.tar", [("symlink", "passwd", "/etc/passwd")]),
        "tar-symlink-write-through": _tar(base / "link_dir.tar", [
            ("symlink", "linkdir", str(outside)),
            ("file", "linkdir/escape_through", b"pwned"),
        ]),
        "tar-symlink-relative": _tar(base / "link_rel.tar", [
            ("symlink", "up", "../../outside"),
            ("file", "up/escape_rel", b"pwned"),
        ]),
        "tar-hardlink-outside": _tar(base / "hard.tar", [("hardlink", "h", "../../outside/x")]),
        "zip-dotdot": _zip(base / "dotdot.zip", [("ok.txt", b"ok"), ("../escape", b"pwned")]),
        "zip-absolute": _zip(base / "abs.zip", [("ok.txt", b"ok"), (str(base / "escape_abs"), b"pwned")]),
        "zip-backslash": _zip(base / "bs.zip", [("..\\escape", b"pwned")]),
        "zip-symlink": _zip(base / "link.zip", [("ok.txt", b"ok")], symlink=("passwd", "/etc/passwd")),
    }


UNSAFE = ["tar-absolute", "tar-dotdot", "tar-dotdot-nested", "tar-symlink-abs", "tar-symlink-write-through",
          "tar-symlink-relative", "tar-hardlink-outside", "zip-dotdot", "zip-absolute", "zip-backslash",
          "zip-symlink"]


@pytest.mark.parametrize("case", UNSAFE)
def test_unsafe_archive_is_rejected(tmp_path, case):
    archive = _unsafe_archives(tmp_path)[case]
    target = tmp_path / "work" / "data" / "out"
    target.parent.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary folder left behind either
    assert _escaped(tmp_path) == []
    assert list((tmp_path / "outside").iterdir()) == []


def test_not_an_archive_is_rejected(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(UnsafeArchiveError, match="not a zip or tar"):
        safe_extract(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()


BENIGN = {"a.txt": b"alpha", "sub/b.bin": PAYLOAD[:1000], "sub/deeper/c.txt": b"gamma"}


def _assert_tree(target: Path, expected: dict[str, bytes]) -> None:
    got = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert got == expected


def test_benign_zip_extracts(tmp_path):
    archive = _zip(tmp_path / "ok.zip", list(BENIGN.items()))
    target = tmp_path / "out"
    assert safe_extract(archive, target) == target
    _assert_tree(target, BENIGN)


def test_benign_tar_gz_extracts_and_replaces_target(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz",
                   [("dir", "sub", b"")] + [("file", k, v) for k, v in BENIGN.items()]
                   + [("symlink", "sub/link_to_a", "../a.txt")], mode="w:gz")
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    safe_extract(archive, target)
    assert not (target / "stale.txt").exists()
    assert (target / "sub" / "link_to_a").is_symlink()
    assert (target / "sub" / "link_to_a").read_bytes() == b"alpha"
    _assert_tree(target, {**BENIGN, "sub/link_to_a": b"alpha"})


# --------------------------------------------------------------------------------------------
# fetchers
# --------------------------------------------------------------------------------------------

def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_fetch_http_downloads_and_extracts_archive(server, tmp_path):
    members = {"case1/image.nii.gz": b"img-1" * 100, "case1/label.nii.gz": b"lbl-1" * 50, "README": b"read me"}
    blob = _zip_bytes(members)
    url = server.add_file("/ds/data.zip", blob, drop_first=True)
    plain = server.add_file("/ds/meta.csv", b"id,value\n1,2\n")
    entry = {"name": "ds", "kind": "http", "files": [
        {"url": url + "?download=1", "sha256": sha256(blob)},
        {"url": plain, "checksum": f"md5:{md5(b'id,value' + bytes([10]) + b'1,2' + bytes([10]))}",
         "path": "tables/meta.csv"},
    ]}
    raw = tmp_path / "raw"
    files_dir = fetch_dataset(entry, raw, POLICY, tmp_path)
    assert files_dir == raw / "ds" / "files"
    assert (files_dir / "data.zip").read_bytes() == blob
    _assert_tree(files_dir / "data", members)
    assert (files_dir / "tables" / "meta.csv").read_text() == "id,value\n1,2\n"

    (files_dir / "leftover.bin.part").write_bytes(b"partial")
    (files_dir / ".hidden").write_bytes(b"hidden")
    inv = inventory(files_dir)
    expected = {"data.zip": blob, "tables/meta.csv": b"id,value\n1,2\n",
                **{f"data/{k}": v for k, v in members.items()}}
    assert sorted(inv["path"]) == sorted(expected)
    for row in inv.itertuples():
        assert row.sha256 == sha256(expected[row.path])
        assert row.bytes == len(expected[row.path])

    # A second fetch re-verifies and downloads nothing.
    before = len(server.requests)
    fetch_dataset(entry, raw, POLICY, tmp_path)
    assert len(server.requests) == before


def test_fetch_http_no_extract(server, tmp_path):
    blob = _zip_bytes({"x.txt": b"x"})
    url = server.add_file("/keep.zip", blob)
    entry = {"name": "k", "kind": "http", "extract": False, "files": [{"url": url, "sha256": sha256(blob)}]}
    files_dir = fetch_http(entry, tmp_path / "files", POLICY, tmp_path)
    assert (files_dir / "keep.zip").exists() and not (files_dir / "keep").exists()


def test_fetch_zenodo(server, tmp_path):
    files = {"scans.zip": _zip_bytes({"s1.nii.gz": b"one", "s2.nii.gz": b"two"}),
             "labels.csv": b"case,label\ns1,0\n", "huge_extra.bin": PAYLOAD}
    server.add_zenodo_record("4242", files)
    entry = {"name": "zen", "kind": "zenodo", "record": "4242", "api": server.url("/api"),
             "include": ["*.zip", "*.csv"]}
    files_dir = fetch_dataset(entry, tmp_path / "raw", POLICY, tmp_path)
    assert (files_dir / "labels.csv").read_bytes() == files["labels.csv"]
    assert (files_dir / "scans.zip").read_bytes() == files["scans.zip"]
    _assert_tree(files_dir / "scans", {"s1.nii.gz": b"one", "s2.nii.gz": b"two"})
    assert not (files_dir / "huge_extra.bin").exists()
    assert server.seen("/api/records/4242/files/huge_extra.bin/content") == []


def test_fetch_zenodo_md5_is_verified(server, tmp_path):
    server.add_zenodo_record("7", {"a.bin": PAYLOAD})
    record = server.json_routes["/api/records/7"]
    record["files"][0]["checksum"] = "md5:" + md5(b"tampered")
    entry = {"name": "zen", "kind": "zenodo", "record": "7", "api": server.url("/api/")}
    with pytest.raises(ChecksumMismatch):
        fetch_zenodo(entry, tmp_path / "files", POLICY, tmp_path)
    assert not (tmp_path / "files" / "a.bin").exists()
    assert not (tmp_path / "files" / "a.bin.part").exists()


def test_fetch_zenodo_missing_record(server, tmp_path):
    entry = {"name": "zen", "kind": "zenodo", "record": "404", "api": server.url("/api")}
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_zenodo(entry, tmp_path / "files", POLICY, tmp_path)


def test_fetch_zenodo_rejects_names_outside_files_dir(server, tmp_path):
    url = server.add_file("/evil.bin", b"pwned")
    server.add_json("/api/records/666", {"files": [
        {"key": "../../escape_zenodo", "checksum": "md5:" + md5(b"pwned"), "links": {"self": url}}]})
    entry = {"name": "zen", "kind": "zenodo", "record": "666", "api": server.url("/api")}
    files_dir = tmp_path / "raw" / "zen" / "files"
    with pytest.raises(DownloadError, match="unsafe"):
        fetch_zenodo(entry, files_dir, POLICY, tmp_path)
    assert _escaped(tmp_path) == []


def test_fetch_osf_recurses_and_paginates(server, tmp_path):
    files = {"top1.txt": b"top one", "top2.txt": b"top two", "top3.txt": b"top three",
             "sub/a.nii.gz": b"A" * 500, "sub/b.nii.gz": b"B" * 700, "sub/c.csv": b"c",
             "sub/deep/d.txt": b"deep"}
    server.add_osf_node("abc12", files, page_size=2)
    entry = {"name": "osf", "kind": "osf", "node": "abc12", "api": server.url("/v2")}
    files_dir = fetch_dataset(entry, tmp_path / "raw", POLICY, tmp_path)
    _assert_tree(files_dir, files)
    listings = [r.path for r in server.requests if r.path.startswith("/v2/")]
    assert "/v2/nodes/abc12/files/osfstorage/?page=2" in listings  # pagination followed
    assert any(p.startswith("/v2/nodes/abc12/files/osfstorage/subid/") for p in listings)  # recursion
    assert any("page=" in p and "/subid/" in p for p in listings)  # pagination inside the folder


def test_fetch_osf_include_and_sha256(server, tmp_path):
    files = {"keep.nii.gz": b"keep", "skip.txt": b"skip", "sub/keep2.nii.gz": b"keep2"}
    server.add_osf_node("n1", files)
    entry = {"name": "osf", "kind": "osf", "node": "n1", "api": server.url("/v2"), "include": ["*.nii.gz"]}
    files_dir = fetch_osf(entry, tmp_path / "files", POLICY, tmp_path)
    _assert_tree(files_dir, {"keep.nii.gz": b"keep", "sub/keep2.nii.gz": b"keep2"})

    # A listed sha256 that does not match the bytes is refused.
    listing = server.json_routes["/v2/nodes/n1/files/osfstorage/"]
    for item in listing["data"]:
        if item["attributes"]["kind"] == "file":
            item["attributes"]["extra"]["hashes"]["sha256"] = sha256(b"other")
    with pytest.raises(ChecksumMismatch):
        fetch_osf(entry, tmp_path / "files2", POLICY, tmp_path)


def manual_entry(**extra) -> dict:
    return {"name": "dua", "kind": "manual", "root": "manual_data", "expect": ["*.nii.gz", "scans/*.nii.gz"],
            "instructions": "Sign the data use agreement at the portal, then unpack it here.", **extra}


def test_fetch_manual_explains_when_absent(tmp_path):
    entry = manual_entry()
    root = tmp_path / "manual_data"
    with pytest.raises(ManualDownloadRequired) as info:
        fetch_dataset(entry, tmp_path / "raw", POLICY, tmp_path)
    message = str(info.value)
    assert "Sign the data use agreement at the portal" in message
    assert str(root) in message
    assert not (tmp_path / "raw").exists()

    root.mkdir()
    (root / "notes.txt").write_text("not a scan")
    with pytest.raises(ManualDownloadRequired):
        fetch_manual(entry, tmp_path / "raw" / "dua" / "files", POLICY, tmp_path)


def test_fetch_manual_returns_root_when_present(tmp_path):
    root = tmp_path / "manual_data" / "scans"
    root.mkdir(parents=True)
    (root / "case1.nii.gz").write_bytes(b"scan")
    assert fetch_dataset(manual_entry(), tmp_path / "raw", POLICY, tmp_path) == tmp_path / "manual_data"
    absolute = manual_entry(root=str(tmp_path / "manual_data"))
    assert fetch_dataset(absolute, tmp_path / "raw", POLICY, "/nonexistent") == tmp_path / "manual_data"


# --------------------------------------------------------------------------------------------
# redact_url
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("https://user:pa55@host.example.org/path/file.zip?token=abc&x=1#frag",
     "https://host.example.org/path/file.zip"),
    ("https://TOKEN123@host.example.org:8443/f.tar.gz?X-Amz-Signature=deadbeef",
     "https://host.example.org:8443/f.tar.gz"),
    ("http://127.0.0.1:8080/a/b.bin", "http://127.0.0.1:8080/a/b.bin"),
    ("http://u:p@[::1]:8080/a.bin?sig=1", "http://[::1]:8080/a.bin"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_policy_from_config():
    from medsynth.settings import section

    policy = DownloadPolicy.from_config({"retries": 2, "backoff_s": 0.5, "progress": False})
    assert (policy.retries, policy.backoff_s, policy.progress) == (2, 0.5, False)
    assert policy.timeout_s == section("download")["timeout_s"]  # the schema's default
