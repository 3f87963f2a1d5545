"""Shards: split one run's inputs among N independent runs (a Slurm array, several machines) that may share one
output folder.

An input belongs to shard ``I`` of ``N`` when a stable hash (SHA-256) of its path relative to its root
(:attr:`invsr_cli.run.discover.Job.rel`, as POSIX text) is ``I`` modulo ``N``. The choice depends on that one path
only: not on the listing order, not on which other files exist, so adding files elsewhere in the tree never moves
an input from one shard to another, and the N shards together hold every input exactly once.

Each shard has its own manifest (``.invsr-manifest.shard-I-of-N.jsonl``) and lock (``.invsr.shard-I-of-N.lock``);
``--skip-existing`` reads every manifest in the folder. Pure code: nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from invsr_cli.base.errors import ConfigError

__all__ = ["Shard", "parse_shard", "resolve_shard", "shard_from_env", "shard_of"]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``; ``source`` says where it came from (for the log)."""

    index: int
    count: int
    source: str = "--shard"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"`shard` must be I/N with 0 <= I < N, got {self.index}/{self.count}"
                              f" (from {self.source})")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """``shard-I-of-N``: the part of this shard's manifest and lock names that sets them apart."""
        return f"shard-{self.index}-of-{self.count}"

    def holds(self, rel: PurePosixPath | str) -> bool:
        return shard_of(rel, self.count) == self.index


def shard_of(rel: PurePosixPath | str, count: int) -> int:
    """The shard (0..count-1) an input with relative path ``rel`` belongs to: SHA-256 of its POSIX text."""
    text = str(PurePosixPath(rel)).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") % count


def parse_shard(text: str, source: str = "--shard") -> Shard:
    """``I/N`` (0-based) -> :class:`Shard`; a clear :class:`ConfigError` otherwise."""
    parts = str(text).strip().split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"`shard` must be I/N with 0 <= I < N (0-based, e.g. 0/4), got {text!r} (from {source})")
    return Shard(int(parts[0]), int(parts[1]), source)


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard a Slurm array task is: ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP``
    of ``SLURM_ARRAY_TASK_COUNT``; None outside an array job."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP")
    raw = {k: env.get(k, {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "1"}.get(k, "")) for k in names}
    try:
        task, low, count, step = (int(raw[k]) for k in names)
    except ValueError:
        raise ConfigError("cannot read the shard from Slurm's environment: "
                          + ", ".join(f"{k}={raw[k]!r}" for k in names)) from None
    step = max(step, 1)
    source = f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={low}, SLURM_ARRAY_TASK_COUNT={count}"
    if (task - low) % step:
        raise ConfigError(f"cannot read the shard from Slurm's environment ({source}, step {step}): the task id is "
                          "not on the array's step; pass --shard I/N")
    return Shard((task - low) // step, count, source)


def resolve_shard(flag: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard`` when given, else the Slurm array task's (see :func:`shard_from_env`), else None (no sharding)."""
    if flag is not None:
        return parse_shard(flag)
    return shard_from_env(env)
