"""glibc malloc tuning for CPU inference: reuse freed activation memory instead of faulting it in again.

A full-size tile on a CPU allocates and frees activation tensors of up to hundreds of MB, hundreds of times. glibc
serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it on ``free``,
so each one is faulted in again page by page and zeroed by the kernel: `invsr bench` counted ~5 million minor page
faults per 128-px tile in fp32. :func:`keep_freed_memory` makes glibc serve large blocks from its heap and never
trim it, so a freed block is reused by the next tile: a fp32 tile ran 1.18x faster on average (the VAE stages
1.25-1.4x), for 0.5-1.4 GB more peak RSS (the heap fragments), and the process keeps its peak until it exits
(docs/PERFORMANCE.md, "Allocator").

It changes the whole process's allocator, so the library never calls it on import or in ``InvSREngine``: the
``invsr`` command does (`invsr_cli.engine.start.load_engine`, `invsr bench`), for CPU engines only. ``INVSR_MALLOC=system`` turns it
off. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["keep_freed_memory", "mode", "ENV"]

ENV = "INVSR_MALLOC"
_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Serve all allocations from glibc's heap (no per-allocation mmap) and do not trim it. True when in effect."""
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. Trim threshold first: with mmap off, a large free at the top of the heap would
    # otherwise be handed back (128 KB default) and faulted in again.
    _applied = mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
    return _applied


def mode() -> str:
    """What the allocator does now, for reports: ``"keep"`` or ``"system"``."""
    return "keep" if _applied else "system"
