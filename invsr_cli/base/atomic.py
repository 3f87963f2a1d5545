"""Atomic file writes and the cleanup of the temporary files an interrupted run leaves (standard library only).

Policies
--------
* **Atomic**: :func:`atomic_write_bytes` writes to a hidden temporary file in the destination folder
  (``.NAME.XXXXXXXX.invsr-tmp``, :data:`TEMP_SUFFIX`), flushes and fsyncs it, renames it over the destination,
  then fsyncs the folder. On any failure (or an interrupt) the temporary file is removed and nothing appears
  under the destination; a previous complete file there is left as it was.
* **Errors**: failures are :class:`~invsr_cli.base.errors.OutputError` naming the file, the step and the OS's reason;
  ENOSPC, EIO and EDQUOT are :class:`~invsr_cli.base.errors.DiskFullError` (continuing would fail every file, so a run
  stops).
* **Stale temporaries**: :func:`cleanup_stale_temps` removes the ``.*.invsr-tmp`` files a killed run left; call
  it while holding the output folder's lock, since a concurrent run's temporary files look the same.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from invsr_cli.base.errors import DiskFullError, OutputError, describe_exception
from invsr_cli.base.paths import display_path

__all__ = ["TEMP_SUFFIX", "atomic_write_bytes", "atomic_write_with", "cleanup_stale_temps", "remove_temps_of"]

TEMP_SUFFIX = ".invsr-tmp"
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EIO} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())


def _classify_os_error(path: Path, exc: OSError, what: str) -> OutputError:
    reason = f"{display_path(path)}: cannot {what}: {exc.strerror or describe_exception(exc)}"
    if exc.errno in _DISK_FULL_ERRNOS:
        return DiskFullError(reason)
    return OutputError(reason)


def _temp_stem(final: Path) -> str:
    """The part of ``final``'s name its temporary files carry (shortened: long names stay within NAME_MAX)."""
    stem = final.name
    while len(os.fsencode(stem)) > 64:
        stem = stem[:-1]
    return stem


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{_temp_stem(final)}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a folder; only a failing disk matters here
        if exc.errno in _DISK_FULL_ERRNOS:
            raise
    finally:
        os.close(fd)


def _prepare_folder(path: Path) -> Path:
    """Refuse a folder as the destination and create the destination's parent folders."""
    if path.is_dir():
        raise OutputError(f"{display_path(path)}: cannot write: the output path is an existing folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _classify_os_error(path, exc, "create the folder") from exc
    return path


def _discard(tmp: Path, path: Path, exc: BaseException, step: str) -> None:
    """After a failed ``step``: remove the temporary file (unless it is already renamed into place) and raise an
    OSError as the :class:`OutputError` naming ``path``; the caller re-raises anything else."""
    if step != "sync the folder of":
        try:
            os.unlink(tmp)
        except OSError:
            pass
    if isinstance(exc, OSError):
        raise _classify_os_error(path, exc, step) from exc


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> int:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder (``.NAME.XXXXXXXX.invsr-tmp``),
    written, flushed and fsynced, then renamed over ``path``; the folder is fsynced after the rename. Parent folders
    are created. On any failure the temporary file is removed and nothing appears under ``path``.

    Returns the number of bytes written. Raises :class:`DiskFullError` (ENOSPC, EIO, EDQUOT) or
    :class:`OutputError`.
    """
    path = _prepare_folder(Path(path))
    fd = -1
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _classify_os_error(path, exc, "create a temporary file") from exc
    else:  # pragma: no cover - 100 random collisions
        raise OutputError(f"{display_path(path)}: cannot create a temporary file")
    step = "write"
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            step = "sync"
            os.fsync(f.fileno())
        step = "rename"
        os.replace(tmp, path)
        step = "sync the folder of"
        _fsync_dir(path.parent)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        _discard(tmp, path, exc, step)
        raise
    return len(data)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Like :func:`atomic_write_bytes` for a writer that needs a file name (a muxer): ``write(tmp)`` writes the
    hidden temporary file ``tmp`` in ``path``'s folder, which is then fsynced and renamed over ``path``. On any
    failure the temporary file is removed and nothing appears under ``path``."""
    path = _prepare_folder(Path(path))
    tmp = _temp_name(path)
    step = "write"
    try:
        write(tmp)
        step = "sync"
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "rename"
        os.replace(tmp, path)
        step = "sync the folder of"
        _fsync_dir(path.parent)
    except BaseException as exc:
        _discard(tmp, path, exc, step)
        raise


def cleanup_stale_temps(out_dir: str | os.PathLike[str]) -> int:
    """Remove temporary files (``.*.invsr-tmp``) left under ``out_dir`` by an interrupted run; returns how many.

    Symlinked folders are not followed. Call it while holding the output folder's lock: a concurrent run's
    temporary files look the same.
    """
    removed = 0
    for root, _dirs, files in os.walk(out_dir, followlinks=False):
        for name in files:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def remove_temps_of(outputs: Iterable[Path]) -> int:
    """Remove the temporary files (``.NAME.XXXXXXXX.invsr-tmp``) that writes of ``outputs`` left, and no others;
    returns how many. For a shard, whose folder other shards write into at the same time (so it must not remove
    theirs), and for workers that died mid-write (a device worker, a Ray actor)."""
    by_folder: dict[Path, set[str]] = {}
    for out in outputs:
        by_folder.setdefault(out.parent, set()).add(_temp_stem(out))
    removed = 0
    for folder, stems in by_folder.items():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                continue
            head = name[1:-len(TEMP_SUFFIX)]  # STEM.XXXXXXXX
            stem, dot, token = head.rpartition(".")
            if dot and len(token) == 8 and stem in stems:
                try:
                    os.unlink(folder / name)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed
