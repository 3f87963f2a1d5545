"""An advisory lock on the output folder, so two runs (overlapping cron jobs) never write the same folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from invsr_cli.base.errors import ConfigError, LockedError
from invsr_cli.base.paths import display_path

__all__ = ["LOCK_NAME", "output_lock"]

LOCK_NAME = ".invsr.lock"


@contextlib.contextmanager
def output_lock(output_dir: Path, *, wait: bool = False, name: str = LOCK_NAME,
                shared: bool = False) -> Iterator[Path]:
    """Hold ``fcntl.flock`` on ``output_dir/.invsr.lock`` for the duration. Without ``wait``, a folder already
    held raises :class:`LockedError` at once (exit 75); with it, block until the other run ends. The lock dies
    with the process, so a crashed run never leaves the folder locked.

    Shards sharing a folder hold the folder's lock ``shared`` (so they exclude a plain run, not each other) and
    their own shard's lock (``name``) exclusively."""
    path = output_dir / name
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only mount or an immutable folder: one line, like every other refusal
        raise ConfigError(f"cannot write to the output folder {display_path(output_dir)}: "
                          f"{e.strerror or e} ({display_path(e.filename or path)})") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown; a sharded run"
            raise LockedError(
                f"another invsr run (pid {holder}) is writing to {output_dir}; "
                "wait for it to finish, or pass --wait to queue behind it"
            ) from None
        os.ftruncate(fd, 0)
        if not shared:  # a shared holder is one of several: the file names no single pid
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
