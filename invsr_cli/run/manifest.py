"""The run manifest: one JSON object per line, per input, appended as each input finishes.

It records what was done (output, status, reason, seconds), with what (the settings fingerprint and the model
identities) and from what (the input's size and mtime). ``--skip-existing`` consults it, so an output made with
other settings, other models or from a since-changed input is recomputed instead of silently kept.

Appends are flushed and fsynced one line at a time; a line cut short by a crash is ignored on reading.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_NAME", "MANIFEST_GLOB", "Manifest", "input_stamp", "manifest_name", "folder_manifests"]

MANIFEST_NAME = ".invsr-manifest.jsonl"
MANIFEST_GLOB = ".invsr-manifest*.jsonl"  # the manifest and any shards (.invsr-manifest.shard-I-of-N.jsonl)


def manifest_name(shard_tag: str | None = None) -> str:
    """The manifest's file name: ``.invsr-manifest.jsonl``, or ``.invsr-manifest.shard-I-of-N.jsonl`` for a shard
    (:attr:`invsr_cli.run.shard.Shard.tag`), so shards sharing a folder never append to one file."""
    return MANIFEST_NAME if shard_tag is None else f".invsr-manifest.{shard_tag}.jsonl"


def folder_manifests(folder: Path) -> list[Path]:
    """Every run manifest in ``folder`` (the plain one and each shard's), oldest modified first, so that reading
    them in order lets the latest record for an output win."""
    found = []
    for p in Path(folder).glob(MANIFEST_GLOB):
        try:
            found.append((p.stat().st_mtime_ns, p.name, p))
        except OSError:
            continue
    return [p for _, _, p in sorted(found)]


def input_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns}


class Manifest:
    """Append-only JSON-lines log keyed by output path (the latest record for an output wins).

    ``also_read``: other manifests whose records count for lookups (the other shards' in a shared folder, see
    :func:`folder_manifests`), read in the order given; appends go to ``path`` only."""

    def __init__(self, path: Path, *, also_read: Iterable[Path] = ()):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, Any]] = {}
        others = [Path(p) for p in also_read]
        for p in others if self.path in others else [*others, self.path]:
            self._load(p)

    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash, or foreign text: ignore it
            if isinstance(rec, dict) and isinstance(rec.get("output"), str):
                self._latest[_key(rec)] = rec

    def records(self) -> list[dict[str, Any]]:
        """The latest record of every output (and of every input that made no job), in order of first appearance."""
        return list(self._latest.values())

    def lookup(self, output: Path) -> dict[str, Any] | None:
        return self._latest.get(str(output))

    def is_up_to_date(self, input_path: Path, output: Path, fingerprint: str) -> bool | None:
        """True: the output exists and was made from this very input with these settings. False: the output exists
        but is stale (other settings or models, a changed input, or a failed attempt). None: the manifest knows
        nothing of it (the output was made by something else, or does not exist)."""
        rec = self.lookup(output)
        if rec is None or not output.exists():
            return None
        try:
            stamp = input_stamp(input_path)
        except OSError:
            return False
        return (
            rec.get("status") == "done"
            and rec.get("fingerprint") == fingerprint
            and rec.get("input_size") == stamp["input_size"]
            and rec.get("input_mtime_ns") == stamp["input_mtime_ns"]
        )

    def append(self, record: dict[str, Any]) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        line = (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # A previous run killed mid-line leaves no newline: start on a fresh line so this record parses.
                if os.fstat(fd).st_size and _last_byte(self.path) != b"\n":
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._latest[_key(record)] = record


def _key(rec: dict[str, Any]) -> str:
    """Records are keyed by output; one with no output (an input that matched nothing) by its input, so several
    such failures are all kept. The NUL prefix cannot occur in a path, so no lookup ever matches it."""
    return rec["output"] or f"\0input:{rec.get('input', '')}"


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)
