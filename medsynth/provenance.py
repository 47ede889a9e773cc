"""Provenance sidecars (``<output>.prov.json``) and the audit that walks them back to raw data.

Every rule script runs its work inside ``tracked(snakemake)``: on success each declared output
gets a sidecar with the rule, the inputs and outputs with their sha256 (a folder's digest covers
every file in it), the rule's params (secrets removed), a hash of the config, the code (git
commit, dirty flag, and a digest of the medsynth package and the rule script), package versions,
the seed, device, host and start/end times. ``audit`` re-hashes everything and follows each
input's own sidecar, down to the raw files the download rule inventoried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from medsynth.fsutil import sha256_file, write_text_atomic

SUFFIX = ".prov.json"
PACKAGES = ("medsynth", "snakemake", "torch", "numpy", "pandas", "nibabel", "SimpleITK", "pydicom", "antspyx",
            "monai", "diffusers", "peft", "accelerate", "TotalSegmentator", "lungmask", "torch-fidelity", "safetensors")
SECRET_KEY = re.compile(r"token|password|passwd|secret|api[_-]?key|credential", re.I)
PACKAGE_DIR = Path(__file__).resolve().parent


def sidecar_of(path: str | os.PathLike) -> Path:
    """The sidecar path of an output file or folder."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def digest(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder: over the sorted (relative path, sha256) of all its files.

    Snakemake's own marker in directory outputs (``.snakemake_timestamp``) is not content.
    """
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".snakemake")):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
        return "dir:" + h.hexdigest()
    return sha256_file(path)


def code_digest(extra: list[str | os.PathLike] = ()) -> str:
    """sha256 over the medsynth package's source files (and ``extra`` files, e.g. the rule script)."""
    h = hashlib.sha256()
    for f in sorted(PACKAGE_DIR.rglob("*.py")) + [Path(e) for e in extra if e and Path(e).exists()]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def git_state(directory: str | os.PathLike) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding ``directory`` ({} outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def scrub(value: Any) -> Any:
    """``value`` with every mapping entry whose key looks like a secret replaced by a marker."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except Exception:  # torch absent or broken: provenance must not fail the rule
        pass
    return f"cpu:{platform.processor() or platform.machine()}"


def _files(named) -> list[str]:
    """Flatten a snakemake Namedlist (or list) of paths."""
    out = []
    for item in named:
        if isinstance(item, (list, tuple)):
            out.extend(str(i) for i in item)
        else:
            out.append(str(item))
    return out


@dataclass
class Provenance:
    """What a rule adds to its sidecars while it runs (``raw``: raw file path -> sha256)."""

    raw: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def tracked(smk, seed: int | None = None) -> Iterator[Provenance]:
    """Run a rule's work; on success write a provenance sidecar for every declared output.

    The yielded ``Provenance`` lets the rule add facts only it knows (the download rule lists the
    raw files with their checksums).
    """
    from medsynth.workers import in_worker

    if in_worker():  # a worker of a multi-process launch: the launching process records the job
        yield Provenance()
        return
    outputs = _files(smk.output)
    for out in outputs:  # a sidecar never outlives the output it describes
        sidecar_of(out).unlink(missing_ok=True)
    start = time.time()
    extra = Provenance()
    yield extra
    end = time.time()
    workdir = Path.cwd()
    script = getattr(smk, "scriptdir", None)
    config = getattr(smk, "config", {}) or {}
    record = {
        "rule": smk.rule,
        "wildcards": dict(smk.wildcards.items()) if hasattr(smk.wildcards, "items") else {},
        "inputs": {p: digest(p) for p in _files(smk.input) if Path(p).exists()},
        "outputs": {p: digest(p) for p in outputs if Path(p).exists()},
        "raw": dict(sorted(extra.raw.items())),
        "params": scrub(dict(smk.params.items()) if hasattr(smk.params, "items") else {}),
        "config_sha256": hashlib.sha256(json.dumps(scrub(config), sort_keys=True, default=str).encode()).hexdigest(),
        "code": {**git_state(script or workdir), "sha256": code_digest()},
        "packages": package_versions(),
        "seed": seed if seed is not None else config.get("seed"),
        "device": _device(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "start": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
        "end": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(end)),
    }
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    for out in outputs:
        if Path(out).exists():
            write_text_atomic(sidecar_of(out), text)


# ---- audit --------------------------------------------------------------------------------------


@dataclass
class AuditNode:
    """One file in the lineage tree and what the audit found."""

    path: str
    rule: str | None = None
    problems: list[str] = field(default_factory=list)
    children: list["AuditNode"] = field(default_factory=list)
    raw: int = 0

    def all_problems(self) -> list[str]:
        """Problems of this node and of everything below it."""
        out = [f"{self.path}: {p}" for p in self.problems]
        for child in self.children:
            out += child.all_problems()
        return out

    def render(self, indent: str = "") -> str:
        """The tree as text, one line per file."""
        status = "OK" if not self.problems else "; ".join(self.problems)
        rule = f"[{self.rule}]" if self.rule else "[raw]"
        extra = f" (+{self.raw} raw files verified)" if self.raw else ""
        lines = [f"{indent}{self.path} {rule} {status}{extra}"]
        for child in self.children:
            lines.append(child.render(indent + "  "))
        return "\n".join(lines)


def audit(path: str | os.PathLike, _seen: dict[str, AuditNode] | None = None, check_code: bool = True) -> AuditNode:
    """Verify ``path`` and its lineage: checksums now vs recorded, inputs' own sidecars, raw files, code."""
    seen = {} if _seen is None else _seen
    key = str(Path(path))
    if key in seen:
        return AuditNode(key, seen[key].rule, [], [])
    node = AuditNode(key)
    seen[key] = node
    sidecar = sidecar_of(path)
    if not Path(path).exists():
        node.problems.append("missing")
        return node
    if not sidecar.exists():
        node.problems.append("untraceable: no provenance sidecar")
        return node
    record = json.loads(sidecar.read_text())
    node.rule = record.get("rule")
    recorded = record.get("outputs", {}).get(key)
    if recorded is None:
        node.problems.append("untraceable: sidecar does not list this file")
    elif digest(path) != recorded:
        node.problems.append("stale: the file changed after it was produced")
    if check_code and record.get("code", {}).get("sha256") and record["code"]["sha256"] != code_digest():
        node.problems.append("stale: the medsynth code changed since this was produced")
    for inp, want in sorted(record.get("inputs", {}).items()):
        if not Path(inp).exists():
            node.problems.append(f"stale: input {inp} is gone")
            continue
        if digest(inp) != want:
            node.problems.append(f"stale: input {inp} changed since")
        node.children.append(audit(inp, seen, check_code))
    for raw, want in sorted(record.get("raw", {}).items()):
        if not Path(raw).exists():
            node.problems.append(f"stale: raw file {raw} is gone")
        elif sha256_file(raw) != want:
            node.problems.append(f"stale: raw file {raw} changed since")
        else:
            node.raw += 1
    return node
