"""fetch_huggingface end to end: huggingface_hub against a loopback stand-in of the Hub (127.0.0.1 only).

The stand-in (tests/hfhub_server.py) emulates the calls ``snapshot_download`` makes for a dataset repo:
repo info (``/api/datasets/<repo>/revision/<rev>``), the recursive tree listing (``/api/datasets/<repo>/tree/<rev>``,
paginated), ``HEAD``/``GET /datasets/<repo>/resolve/<rev>/<path>`` and a signed-URL "CDN" (another origin) for LFS
blobs. The fake repo is a gated copy of the CT-RATE layout and the entry is the real ``ct_rate`` registry entry with
only ``endpoint`` overridden, so the include patterns of config/datasets.yaml are what is exercised.

Isolation: huggingface_hub reads HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET and HF_ENDPOINT when it
is imported, so the environment variables are set *and* the module constants patched; the endpoint reaches the
library only through the entry's ``endpoint`` key (which fetch_huggingface forwards). A socket guard refuses (and
records) any name lookup or connection that is not to the loopback address, so "nothing left 127.0.0.1" is checked,
not assumed.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import sys
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hfhub_server import FakeHub, RunningHub  # noqa: E402

from medsynth.data.download import DownloadError, DownloadPolicy  # noqa: E402
from medsynth.data.fetch import fetch_dataset, fetch_huggingface, inventory  # noqa: E402
from medsynth.data.registry import load_registry, resolve_datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POLICY = DownloadPolicy(retries=1, backoff_s=0.01, backoff_max_s=0.01, timeout_s=5.0, progress=False)

TOKEN = "hf_MedsynthTestToken0123456789abcdEFGH"  # granted access to the gated repo
TOKEN_NOT_GRANTED = "hf_ValidTokenWithoutAccess0987654321zyx"  # a real user who did not accept the terms
TOKEN_INVALID = "hf_InvalidTokenValue5555555555555555qq"  # not a token the Hub knows
AMBIENT_TOKEN = "hf_AmbientLoginToken7777777777777777ww"  # a login lying around in HF_TOKEN / HF_HOME/token

CT_RATE_REPO = "ibrahimhamamci/CT-RATE"
INCLUDED = ["dataset/multi_abnormality_labels/train_predicted_labels.csv",
            "dataset/radiology_text_reports/train_reports.csv", "dataset/train/a/a_1.nii.gz",
            "dataset/valid/b/b_1.nii.gz"]
EXCLUDED = [".gitattributes", "README.md", "models/CT-CLIP-Related/CT-CLIP_v2.pt"]  # the repo's models: not the dataset's
PAGE_SIZE = 4  # tree entries per page: the listing (7 files + 10 folders) takes several pages


def _nifti_gz(tmp: Path, name: str, seed: int, shape: tuple[int, int, int]) -> bytes:
    data = np.random.default_rng(seed).integers(-1000, 1500, size=shape, dtype=np.int16)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.5, 1.0]))
    path = tmp / name
    img.to_filename(str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("hf_payloads")
    return {
        "dataset/train/a/a_1.nii.gz": _nifti_gz(tmp, "a_1.nii.gz", 1, (6, 5, 4)),
        "dataset/valid/b/b_1.nii.gz": _nifti_gz(tmp, "b_1.nii.gz", 2, (4, 4, 3)),
        "dataset/radiology_text_reports/train_reports.csv": (
            b"VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
            b"a_1.nii.gz,Cough.,Non-contrast chest CT.,No consolidation.,Normal study.\n"
        ),
        ".gitattributes": b"*.nii.gz filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"---\nlicense: cc-by-nc-sa-4.0\nextra_gated_prompt: accept the terms\n---\n# CT-RATE\n",
        "dataset/multi_abnormality_labels/train_predicted_labels.csv": b"VolumeName,Emphysema\na_1.nii.gz,0\n",
        "models/CT-CLIP-Related/CT-CLIP_v2.pt": b"not a checkpoint: the dataset entry never fetches it",
    }


# --------------------------------------------------------------------------------------------
# isolation
# --------------------------------------------------------------------------------------------

def _make_hub(payloads: dict[str, bytes], repo_id: str = CT_RATE_REPO, gated: bool = True) -> FakeHub:
    hub = FakeHub(repo_id=repo_id, gated=gated, granted_tokens={TOKEN}, known_tokens={TOKEN_NOT_GRANTED},
                  page_size=PAGE_SIZE)
    for path, data in payloads.items():
        hub.add_file(path, data, lfs=path.endswith(".nii.gz"))
    return hub


@pytest.fixture
def hub(hf_env, payloads):
    with RunningHub(_make_hub(payloads)) as state:
        yield state


@pytest.fixture
def ct_rate(hub, monkeypatch) -> dict:
    """The real ct_rate registry entry, pointed at the stand-in (the only override)."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # for the record: read at import, so the entry's key is what counts
    registry = load_registry(REPO / "config" / "datasets.yaml")
    entry = resolve_datasets([{"name": "ct_rate", "endpoint": hub.endpoint}], registry)["ct_rate"]
    assert entry["kind"] == "huggingface" and entry["repo_id"] == CT_RATE_REPO
    assert entry["auth"]["env"] == "HF_TOKEN"
    return entry


def _fetch(entry: dict, tmp_path: Path) -> Path:
    return fetch_dataset(entry, tmp_path / "raw", POLICY, base_dir=tmp_path)


def _visible_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _routes(requests) -> list[tuple[str, str, str]]:
    return [(r.server, r.method, r.route) for r in requests]


def _expected_first_download(hub: FakeHub) -> list[tuple[str, str, str]]:
    """The requests huggingface_hub makes for a fresh local_dir, as a sorted list (threads interleave)."""
    base = f"/api/datasets/{CT_RATE_REPO}"
    n_tree = len(hub.tree())
    expected = [("hub", "GET", f"{base}/revision/main")]
    expected += [("hub", "GET", f"{base}/tree/{hub.commit}")] * math.ceil(n_tree / PAGE_SIZE)
    for path in INCLUDED:
        f = hub.files[path]
        # every file: HEAD .../resolve/<commit>/<path> (metadata); then either the bytes from the same URL
        # (regular git file) or the signed CDN URL the 302 pointed at (LFS file).
        expected.append(("hub", "HEAD", f"/datasets/{CT_RATE_REPO}/resolve/{hub.commit}/{path}"))
        if f.lfs:
            expected.append(("cdn", "GET", f"/repos/{CT_RATE_REPO.replace('/', '-')}/{f.sha256}"))
        else:
            expected.append(("hub", "GET", f"/datasets/{CT_RATE_REPO}/resolve/{hub.commit}/{path}"))
    return sorted(expected)


# --------------------------------------------------------------------------------------------
# 1. gated download with the token
# --------------------------------------------------------------------------------------------

def test_gated_download_fetches_exactly_the_included_files(ct_rate, hub, hf_env, tmp_path, monkeypatch, payloads):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = _fetch(ct_rate, tmp_path)

    assert root == tmp_path / "raw" / "ct_rate" / "files"
    assert _visible_files(root) == INCLUDED
    for path in INCLUDED:
        assert (root / path).read_bytes() == payloads[path], path
    img = nib.load(str(root / "dataset/train/a/a_1.nii.gz"))
    assert img.shape == (6, 5, 4) and img.get_fdata().std() > 0

    # Exactly the calls the library is expected to make, and nothing for the excluded files.
    assert sorted(_routes(hub.requests)) == _expected_first_download(hub)
    assert hub.unknown == []
    for path in EXCLUDED:
        assert hub.seen_for_file(path) == [], path
    tree_pages = hub.seen(prefix=f"/api/datasets/{CT_RATE_REPO}/tree/")
    assert len(tree_pages) > 1 and all("recursive=true" in r.path.lower() for r in tree_pages)

    # The token went with every request to the Hub, and never to the CDN (signed URLs, another origin).
    hub_requests = hub.seen(server="hub")
    assert hub_requests and all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    cdn_requests = hub.seen(server="cdn")
    assert len(cdn_requests) == 2 and all(r.authorization is None for r in cdn_requests)

    # The library's own cache went to the test's HF_HOME, not to the user's.
    ref = hf_env / "hub" / "datasets--ibrahimhamamci--CT-RATE" / "refs" / "main"
    assert ref.read_text() == hub.commit


# --------------------------------------------------------------------------------------------
# 2. no token
# --------------------------------------------------------------------------------------------

def test_missing_token_fails_before_any_request(ct_rate, hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(DownloadError, match="HF_TOKEN") as info:
        _fetch(ct_rate, tmp_path)
    assert "ct_rate" in str(info.value) and "gated" in str(info.value)
    assert hub.requests == []
    assert _visible_files(tmp_path / "raw" / "ct_rate" / "files") == []

    # The same with an empty variable (exported but unset in a shell profile).
    monkeypatch.setenv("HF_TOKEN", "")
    with pytest.raises(DownloadError, match="HF_TOKEN"):
        fetch_huggingface(ct_rate, tmp_path / "files", POLICY, tmp_path)
    assert hub.requests == []


def test_public_dataset_never_sends_an_ambient_token(hf_env, payloads, tmp_path, monkeypatch):
    """A public entry (no ``auth``) passes token=False: neither HF_TOKEN nor HF_HOME/token is sent."""
    monkeypatch.setenv("HF_TOKEN", AMBIENT_TOKEN)
    hf_env.mkdir(parents=True, exist_ok=True)
    (hf_env / "token").write_text(AMBIENT_TOKEN)
    repo = "AbdomenAtlas/_AbdomenAtlas1.1Mini"
    files = {"BDMAP_00000001/ct.nii.gz": payloads["dataset/train/a/a_1.nii.gz"],
             "BDMAP_00000001/combined_labels.nii.gz": payloads["dataset/valid/b/b_1.nii.gz"]}
    with RunningHub(_make_hub(files, repo_id=repo, gated=False)) as hub:
        registry = load_registry(REPO / "config" / "datasets.yaml")
        entry = resolve_datasets([{"name": "abdomenatlas_1_1_mini", "endpoint": hub.endpoint}],
                                 registry)["abdomenatlas_1_1_mini"]
        assert "auth" not in entry
        root = _fetch(entry, tmp_path)
        assert _visible_files(root) == sorted(files)
        assert all((root / p).read_bytes() == data for p, data in files.items())
        assert hub.requests and all(r.authorization is None for r in hub.requests)
        assert hub.unknown == []


# --------------------------------------------------------------------------------------------
# 3. a token the Hub rejects
# --------------------------------------------------------------------------------------------

def _assert_secrets_not_shown(secrets: list[str], error: BaseException | None, caplog, capfd) -> None:
    out, err = capfd.readouterr()
    shown = [out, err, caplog.text]
    shown += [f"{r.getMessage()} {r.args} {r.exc_text or ''}" for r in caplog.records]
    if error is not None:
        shown += ["".join(traceback.format_exception(error)), repr(error)]  # the chain: __cause__, __context__
    for secret in secrets:
        assert not any(secret in text for text in shown)


@pytest.mark.parametrize("token, status", [(TOKEN_INVALID, 401), (TOKEN_NOT_GRANTED, 403)],
                         ids=["invalid-token-401", "not-granted-403"])
def test_rejected_token_raises_without_showing_it(ct_rate, hub, tmp_path, monkeypatch, caplog, capfd,
                                                   token, status):
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    monkeypatch.setattr(constants, "HF_DEBUG", True)  # the library then logs every request as a curl command
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(HfHubHTTPError) as info:
        _fetch(ct_rate, tmp_path)
    error = info.value
    assert error.response.status_code == status
    if status == 403:
        assert isinstance(error, GatedRepoError)
    assert "restricted" in str(error) or "Invalid credentials" in str(error)

    # The token was really sent (so the checks below mean something), the refusal stopped everything.
    assert [r.authorization for r in hub.requests] == [f"Bearer {token}"]
    assert _routes(hub.requests) == [("hub", "GET", f"/api/datasets/{CT_RATE_REPO}/revision/main")]
    assert _visible_files(tmp_path / "raw" / "ct_rate" / "files") == []
    assert "Send: curl" in caplog.text and "<TOKEN>" in caplog.text  # debug logging was on and redacted
    _assert_secrets_not_shown([token], error, caplog, capfd)


def test_revoked_token_with_files_present_keeps_them_and_does_not_leak(ct_rate, hub, tmp_path, monkeypatch,
                                                                      caplog, capfd, payloads):
    """Library behaviour, pinned: when the Hub refuses but local_dir already holds the snapshot,
    snapshot_download returns it with a warning instead of raising."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = _fetch(ct_rate, tmp_path)
    before = len(hub.requests)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    capfd.readouterr()
    monkeypatch.setenv("HF_TOKEN", TOKEN_INVALID)
    assert _fetch(ct_rate, tmp_path) == root
    assert _routes(hub.requests[before:]) == [("hub", "GET", f"/api/datasets/{CT_RATE_REPO}/revision/main")]
    assert "remote repo cannot be accessed" in caplog.text
    assert _visible_files(root) == INCLUDED
    _assert_secrets_not_shown([TOKEN_INVALID, TOKEN], None, caplog, capfd)


# --------------------------------------------------------------------------------------------
# 4. a second call
# --------------------------------------------------------------------------------------------

def test_second_call_downloads_nothing(ct_rate, hub, tmp_path, monkeypatch, payloads):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = _fetch(ct_rate, tmp_path)
    mtimes = {p: (root / p).stat().st_mtime_ns for p in INCLUDED}
    first = len(hub.requests)

    # Same commit: the revision is resolved (one API call), the tree listing is read from
    # local_dir/.cache/huggingface/trees/<commit>.json, and every file's download metadata
    # (.cache/huggingface/download/<path>.metadata) names that commit => no HEAD, no GET.
    assert _fetch(ct_rate, tmp_path) == root
    assert _routes(hub.requests[first:]) == [("hub", "GET", f"/api/datasets/{CT_RATE_REPO}/revision/main")]
    assert {p: (root / p).stat().st_mtime_ns for p in INCLUDED} == mtimes

    # A new commit with the same files: a new tree listing and one HEAD per file (ETags compared with the
    # local metadata), still no bytes moved.
    second = len(hub.requests)
    hub.commit = "b" * 40
    _fetch(ct_rate, tmp_path)
    new = hub.requests[second:]
    assert [r.method for r in new if r.server == "cdn" or r.method == "GET" and "/resolve/" in r.route] == []
    assert sorted(r.route for r in new if r.method == "HEAD") == sorted(
        f"/datasets/{CT_RATE_REPO}/resolve/{hub.commit}/{p}" for p in INCLUDED)
    assert len([r for r in new if "/tree/" in r.route]) == math.ceil(len(hub.tree()) / PAGE_SIZE)
    assert {p: (root / p).stat().st_mtime_ns for p in INCLUDED} == mtimes

    # One file lost locally: only that one is fetched again.
    third = len(hub.requests)
    (root / "dataset/valid/b/b_1.nii.gz").unlink()
    _fetch(ct_rate, tmp_path)
    moved = [r for r in hub.requests[third:] if r.server == "cdn" or (r.method == "GET" and "/resolve/" in r.route)]
    assert [r.route for r in moved] == [
        f"/repos/{CT_RATE_REPO.replace('/', '-')}/{hub.files['dataset/valid/b/b_1.nii.gz'].sha256}"]
    assert (root / "dataset/valid/b/b_1.nii.gz").read_bytes() == payloads["dataset/valid/b/b_1.nii.gz"]
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.seen(server="hub"))


# --------------------------------------------------------------------------------------------
# 5. inventory of the result
# --------------------------------------------------------------------------------------------

def test_inventory_skips_the_library_cache_and_matches_the_hub(ct_rate, hub, tmp_path, monkeypatch, payloads):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = _fetch(ct_rate, tmp_path)
    hidden = [p.relative_to(root).as_posix() for p in (root / ".cache" / "huggingface").rglob("*") if p.is_file()]
    assert any(h.endswith(".metadata") for h in hidden)  # the library's bookkeeping is there ...
    assert any("/trees/" in h for h in hidden)

    table = inventory(root)
    assert list(table["path"]) == INCLUDED  # ... and not in the inventory
    for row in table.itertuples():
        assert row.bytes == len(payloads[row.path])
        assert row.sha256 == hashlib.sha256(payloads[row.path]).hexdigest()
        f = hub.files[row.path]
        if f.lfs:  # the sha256 the Hub advertises for LFS files (tree lfs.oid, X-Linked-Etag)
            assert row.sha256 == f.tree_entry()["lfs"]["oid"]
    assert gzip.decompress((root / INCLUDED[2]).read_bytes())[:4] == (348).to_bytes(4, "little")  # NIfTI-1 header

    everything = inventory(root, skip_hidden=False)
    assert set(everything["path"]) > set(INCLUDED)
    assert all(p.startswith(".cache/huggingface/") for p in set(everything["path"]) - set(INCLUDED))


# --------------------------------------------------------------------------------------------
# integrity: huggingface_hub checks only the size of what it downloads
# --------------------------------------------------------------------------------------------

def test_corrupted_lfs_blob_of_the_right_size_is_caught_and_refetched(ct_rate, hub, tmp_path, monkeypatch,
                                                                      payloads):
    from medsynth.data.download import ChecksumMismatch

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = "dataset/train/a/a_1.nii.gz"
    good = payloads[path]
    bad = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]  # same length: passes the library's size check
    hub.cdn_tamper[path] = bad
    root = tmp_path / "raw" / "ct_rate" / "files"
    with pytest.raises(ChecksumMismatch) as info:
        _fetch(ct_rate, tmp_path)
    message = str(info.value)
    assert path in message and hashlib.sha256(bad).hexdigest() in message
    assert hashlib.sha256(good).hexdigest() in message
    # The bad file and the library's record of it are gone (else the next run would trust the record) ...
    assert not (root / path).exists()
    assert not (root / ".cache/huggingface/download" / f"{path}.metadata").exists()
    assert (root / "dataset/valid/b/b_1.nii.gz").read_bytes() == payloads["dataset/valid/b/b_1.nii.gz"]

    # ... so once the CDN serves the right bytes, the next run fetches that file (and only that one) again.
    del hub.cdn_tamper[path]
    before = len(hub.requests)
    _fetch(ct_rate, tmp_path)
    moved = [r.route for r in hub.requests[before:]
             if r.server == "cdn" or (r.method == "GET" and "/resolve/" in r.route)]
    assert moved == [f"/repos/{CT_RATE_REPO.replace('/', '-')}/{hashlib.sha256(good).hexdigest()}"]
    assert inventory(root)["sha256"].tolist() == [hashlib.sha256(payloads[p]).hexdigest() for p in INCLUDED]
