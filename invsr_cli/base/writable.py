"""Can a run write where it was told to? Checked before anything is computed or created (standard library only).

A read-only mount, a folder under one, an immutable folder (``chattr +i``) or a folder without permission: each
is refused up front as one line naming the place and the reason (:class:`~invsr_cli.base.errors.ConfigError`,
exit 2), instead of a traceback from the lock, a lost manifest, or a report that fails after the whole compute.

The check is real, not ``os.access`` (which trusts permission bits and misses some mounts): a hidden probe file is
created and removed in the folder, or, when the folder does not exist yet, in the nearest folder above it that does
(so nothing is left behind and no folder is created). An existing file is opened for appending, which changes
nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from invsr_cli.base.errors import ConfigError
from invsr_cli.base.paths import display_path

__all__ = ["refuse_unwritable_folder", "refuse_unwritable_file"]


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_folder(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (an existing path), or None."""
    if not folder.is_dir():
        return f"{display_path(folder)} is not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".invsr-probe-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(name)
    return None


def _problem(path: Path, *, is_file: bool) -> str | None:
    if is_file and path.is_file():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as e:
            return e.strerror or str(e)
        return None
    if is_file and path.exists():
        return "it exists and is not a file"
    target = path.parent if is_file else path
    found = _existing_ancestor(target)
    why = _probe_folder(found)
    if why is None or found == target.absolute():
        return why
    return f"{display_path(found)}: {why}"  # the folder would be created under it


def refuse_unwritable_folder(folder: str | os.PathLike[str], what: str = "the output folder") -> None:
    """ConfigError (exit 2) when files cannot be created in ``folder`` (or it cannot be created)."""
    folder = Path(folder)
    if (why := _problem(folder, is_file=False)) is not None:
        verb = "write to" if folder.is_dir() else "create"
        raise ConfigError(f"cannot {verb} {what} {display_path(folder)}: {why}")


def refuse_unwritable_file(path: str | os.PathLike[str], what: str, consequence: str = "") -> None:
    """ConfigError (exit 2) when the file ``path`` cannot be written (appended to, or created in its folder).
    ``consequence``: what would go wrong without it, appended to the message."""
    path = Path(path)
    if (why := _problem(path, is_file=True)) is not None:
        raise ConfigError(f"cannot write {what} {display_path(path)}: {why}{consequence}")
