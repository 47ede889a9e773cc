"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: absolute paths, ``..`` components and links
that point outside the target are rejected (tar through the standard library's ``data`` filter,
zip by the same rules), and the archive is unpacked into a temporary folder that is renamed into
place only when all of it extracted.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from medsynth.fsutil import atomic_dir


class UnsafeArchiveError(ValueError):
    """The archive holds a member that would land outside the target folder."""


def is_archive(path: str | Path) -> bool:
    """True for files that ``safe_extract`` can unpack."""
    name = str(path).lower()
    return name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def _check_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"absolute path in archive: {name!r}")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"parent-directory component in archive: {name!r}")


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    _check_name(name)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"symbolic link in zip archive: {name!r}")


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract ``archive`` into ``target`` (created; replaced if present) after checking every member."""
    archive, target = Path(archive), Path(target)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_zip_member(info)
            with atomic_dir(target) as tmp:
                zf.extractall(tmp)
        return target
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                # The data filter strips a leading "/" instead of refusing the member: check names first.
                _check_name(member.name)
                try:
                    tarfile.data_filter(member, str(target))
                except tarfile.FilterError as err:
                    raise UnsafeArchiveError(f"unsafe member in {archive.name}: {err}") from err
            with atomic_dir(target) as tmp:
                tf.extractall(tmp, members=members, filter="data")
        return target
    raise UnsafeArchiveError(f"not a zip or tar archive: {archive}")
