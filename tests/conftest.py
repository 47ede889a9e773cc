"""Shared fixtures: the shipped scans and small helpers."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "resources" / "example_data"
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (dicom_writer, ...)


def threshold_masks(hu: np.ndarray) -> np.ndarray:
    """Five uint8 condition channels of a CT from HU thresholds (soft tissue, lung, bone, contrast, empty):
    stand-ins for organ masks in tests that need masks shaped like the pipeline's, not anatomy."""
    return np.stack([(hu > 40) & (hu < 120), hu < -500, hu > 250, (hu > 150) & (hu < 250),
                     np.zeros_like(hu, bool)]).astype(np.uint8)


def ct_slice_shard(root: Path, names: list[str], n: int = 24, size: int = 32) -> list[str]:
    """A training-set shard of ``n`` axial slices (``size`` px) of the shipped upper-abdomen CT with five
    threshold masks; alternate slices labelled CT / MR, every sixth in the test split. Returns its two files."""
    import json

    from medsynth.io.trainsets import write_shard
    from medsynth.preprocess.intensity import hu_to_unit
    from medsynth.preprocess.trainsets import SliceOptions, axial_slices

    hu = np.asarray(nib.load(str(EXAMPLE / "ct" / "upper_abdomen_ct_3mm.nii.gz")).dataobj, dtype=np.float32)
    samples = []
    for i, (z, img, msk) in enumerate(axial_slices(hu_to_unit(hu), threshold_masks(hu), np.ones(hu.shape),
                                                   SliceOptions.from_config({"size": size}))):
        if i >= n:
            break
        present = [name for name, m in zip(names, msk) if m.any()]
        row = {"case_id": "ct" if i % 2 else "mr", "patient_id": "p", "dataset": "t",
               "modality": "CT" if i % 2 else "MR", "split": "test" if i % 6 == 5 else "train",
               "prompt_contrast": "portal venous" if i % 2 else "none", "prompt_region": "upper abdomen",
               "slice": z, "organs": json.dumps(present)}
        samples.append((row, img, msk))
    write_shard(samples, names, root / "shard-000.safetensors", root / "shard-000.csv")
    return [str(root / "shard-000.safetensors"), str(root / "shard-000.csv")]


def ct_volume_shard(root: Path, names: list[str], n: int, test: tuple[int, ...], size: int, crop_step: int,
                    mirror_half: bool = False) -> list[str]:
    """A training-set shard of ``n`` CT volumes (``size``^3) of the shipped upper-abdomen CT: volume ``i`` is
    the scan with ``crop_step`` x (its index) voxels cropped off the x axis (``mirror_half``: the second half
    mirrored left-right, the index counted within each half), five threshold masks; ``test`` volumes in the
    test split. Returns its two files."""
    import json

    from medsynth.io.trainsets import write_shard
    from medsynth.preprocess.intensity import hu_to_unit
    from medsynth.preprocess.trainsets import volume_sample

    hu_full = np.asarray(nib.load(str(EXAMPLE / "ct" / "upper_abdomen_ct_3mm.nii.gz")).dataobj, dtype=np.float32)
    half = n // 2 if mirror_half else n
    samples = []
    for i in range(n):
        source = hu_full[:, ::-1] if mirror_half and i >= half else hu_full
        hu = np.ascontiguousarray(source[(i % half) * crop_step:])
        image, mask = volume_sample(hu_to_unit(hu), threshold_masks(hu), (size,) * 3)
        row = {"case_id": f"vol{i}", "patient_id": f"p{i}", "dataset": "t", "modality": "CT",
               "split": "test" if i in test else "train", "prompt_contrast": "portal venous",
               "prompt_region": "upper abdomen", "slice": -1,
               "organs": json.dumps([name for name, m in zip(names, mask) if m.any()])}
        samples.append((row, image, mask))
    write_shard(samples, names, root / "shard-000.safetensors", root / "shard-000.csv")
    return [str(root / "shard-000.safetensors"), str(root / "shard-000.csv")]


STUB_BIN = "medsynth-test-stubs"


@pytest.fixture(scope="session", autouse=True)
def no_slurm_controller_wait(tmp_path_factory):
    """A stub ``scontrol`` first on PATH for the whole session: snakemake's SLURM executor plugin runs
    ``scontrol show config`` on every snakemake call, executor or not, and waits up to 10 s (measured 9 s)
    where slurm is installed but no controller answers. Local runs never use SLURM, so the stub answers
    "no controller" at once; tests/test_slurm.py takes it off PATH while its cluster runs."""
    stubs = tmp_path_factory.mktemp(STUB_BIN)
    (stubs / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (stubs / "scontrol").chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", os.pathsep.join([str(stubs), os.environ.get("PATH", "")]))
        yield stubs


def path_without_stubs() -> str:
    """PATH without the session's stub folder (:func:`no_slurm_controller_wait`)."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if STUB_BIN not in p)


@pytest.fixture(scope="module")
def text_encoder():
    """The MiniLM text encoder of the generator tests (built from the locally made tokenizer and weights)."""
    from medsynth.models.text import build_text_encoder

    return build_text_encoder({"type": "minilm"})


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one intra-op thread for a test module: on the shared 2-core machine extra threads only
    fight each other at these model sizes, and results stay reproducible."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def example_dir() -> Path:
    return EXAMPLE


@pytest.fixture(scope="session")
def ct_small() -> nib.Nifti1Image:
    """Real CT, upper abdomen, 122x101x30 at 3 mm, RAS, HU."""
    return nib.load(str(EXAMPLE / "ct" / "upper_abdomen_ct_3mm.nii.gz"))


@pytest.fixture(scope="session")
def ct_lps() -> nib.Nifti1Image:
    """Real CT angiography, 233x167x191 at 1.5 mm, stored LPS."""
    return nib.load(str(EXAMPLE / "ct" / "chest_cta_1p5mm.nii.gz"))


@pytest.fixture(scope="session")
def mr_lps() -> nib.Nifti1Image:
    """Real abdominal MR, 117x91x20 at 3 mm, stored LPS."""
    return nib.load(str(EXAMPLE / "mr" / "abdomen_mr_3mm.nii.gz"))


# -- the loopback Hub stand-in (tests/hfhub_server.py): socket guard and a confined huggingface_hub --

def _guard_sockets(monkeypatch) -> list[str]:
    """Patch ``socket`` so every name lookup and connection not to 127.0.0.1 is refused; the attempts list."""
    attempts: list[str] = []
    allowed_hosts = {"127.0.0.1", b"127.0.0.1"}
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in allowed_hosts:
            attempts.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: {host!r} is off limits (loopback only)")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            attempts.append(f"connect {address!r}")
            raise ConnectionRefusedError(f"test guard: {address!r} is off limits (loopback only)")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def loopback_only(monkeypatch):
    """Refuse (and record) every name lookup and connection that is not to 127.0.0.1."""
    attempts = _guard_sockets(monkeypatch)
    yield attempts
    assert attempts == [], f"requests tried to leave 127.0.0.1: {attempts}"


@pytest.fixture(scope="module")
def loopback_module():
    """:func:`loopback_only` for a whole module (its module-scoped fixtures fetch from the Hub stand-in)."""
    with pytest.MonkeyPatch.context() as mp:
        attempts = _guard_sockets(mp)
        yield attempts
    assert attempts == [], f"requests tried to leave 127.0.0.1: {attempts}"


@pytest.fixture
def hf_env(tmp_path, monkeypatch, loopback_only):
    """huggingface_hub confined to tmp_path: its cache, no token on disk, no proxy, no Xet, online."""
    from huggingface_hub import close_session, constants
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    home = tmp_path / "hf_home"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_TOKEN_PATH",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    env = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    # The same settings as module constants: they were read when huggingface_hub was imported.
    for name, value in {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": False,
                        "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True,
                        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
                        "HF_XET_CACHE": str(home / "xet")}.items():
        monkeypatch.setattr(constants, name, value)
    close_session()  # the next call builds a fresh httpx2 client from this environment (no proxy)
    disable_progress_bars()
    yield home
    close_session()  # drop keep-alive connections to this test's servers
    enable_progress_bars()
