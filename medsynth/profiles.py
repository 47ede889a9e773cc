"""The named snakemake profiles ``local`` and ``slurm``: ``snakemake --profile slurm`` as users type it.

snakemake resolves a profile name (no path) in the working directory, then in its user and site
config folders (``$XDG_CONFIG_HOME/snakemake``, default ``~/.config/snakemake``; ``/etc/xdg/snakemake``),
never in the workflow's ``profiles/``. :func:`install_profiles` links this checkout's
``profiles/<name>`` there (``install.sh`` runs it), so the name works from any folder; a profile of
that name the user made themselves is left alone and reported.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROFILES", "install_profiles", "user_profile_dir"]

#: the profiles this checkout ships under profiles/
PROFILES = ("local", "slurm")


def user_profile_dir() -> Path:
    """Where snakemake looks for named profiles of this user (its own platformdirs lookup)."""
    from platformdirs import AppDirs

    return Path(AppDirs("snakemake", "snakemake").user_config_dir)


def install_profiles(repo: str | Path, target: str | Path | None = None) -> list[str]:
    """Link ``repo/profiles/<name>`` as ``<target>/<name>`` for each of :data:`PROFILES`; one line per profile
    saying what was done. ``target``: default :func:`user_profile_dir`. Idempotent."""
    target = Path(target) if target is not None else user_profile_dir()
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in PROFILES:
        source = (Path(repo) / "profiles" / name).resolve()
        link = target / name
        if link.is_symlink() and Path(os.readlink(link)).resolve() == source:
            lines.append(f"profile {name}: {link} -> {source} (already linked)")
        elif link.is_symlink() and not link.exists():  # a dangling link, e.g. from a deleted clone
            link.unlink()
            link.symlink_to(source, target_is_directory=True)
            lines.append(f"profile {name}: {link} -> {source} (replaced a dangling link)")
        elif link.exists() or link.is_symlink():
            lines.append(f"profile {name}: kept {link} (not this checkout's; use --profile {source} for ours)")
        else:
            link.symlink_to(source, target_is_directory=True)
            lines.append(f"profile {name}: {link} -> {source}")
    return lines
