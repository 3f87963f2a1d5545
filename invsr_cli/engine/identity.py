"""The identity of the weights a run uses, for run manifests: cheap, and never loads a model or touches the network.

``model_identity(sd_model, noise_predictor)`` is JSON data, stable across runs, with one entry per source:

* a Hub source: ``{"source": "hub", "repo": ..., "revision": <commit of the cached snapshot, or None when nothing is
  cached>}`` (plus ``"file"`` for the noise predictor). The commit names the content; nothing is hashed.
* a local source: ``{"source": "local", "path": <resolved path>, "sha256": <content hash, or None when absent>}``.
  A folder's hash covers every file invsr reads from it (configs, tokenizer, weights; see
  :func:`invsr_cli.engine.weights.resolve`), each hashed alone and combined in a fixed order.

Each file's SHA-256 is computed once and kept in a small JSON cache keyed by the resolved path, valid while the
file's size and mtime (ns) are unchanged, so a run does not re-read 5 GB of weights to know they are the same.
The cache is ``$INVSR_CACHE_DIR/hashes.json`` (default ``$XDG_CACHE_HOME/invsr``, else ``~/.cache/invsr``); it is
written atomically, and a cache that cannot be read or written only costs re-hashing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from invsr_cli.base.errors import ModelLoadError
from invsr_cli.engine.weights import DEFAULT_SD_MODEL, Source, resolve

__all__ = ["model_identity", "identity_of", "file_sha256", "hash_cache_path"]

_CHUNK = 1 << 20


def hash_cache_path() -> Path:
    """``$INVSR_CACHE_DIR/hashes.json``, default ``$XDG_CACHE_HOME/invsr/hashes.json`` (``~/.cache`` when unset)."""
    base = os.environ.get("INVSR_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "invsr")
    return Path(base).expanduser() / "hashes.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temporary file in the same folder, then rename); failures are ignored: it is only a cache."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_hashes(paths: list[Path]) -> dict[Path, str]:
    """SHA-256 of each file, from the cache when its (path, size, mtime_ns) entry matches, else computed and
    stored. One cache read, at most one write."""
    cache_file = hash_cache_path()
    cache = _read_cache(cache_file)
    out: dict[Path, str] = {}
    changed = False
    for path in paths:
        key = str(path.resolve())
        st = os.stat(key)
        entry = cache.get(key)
        if (isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns
                and isinstance(entry.get("sha256"), str)):
            out[path] = entry["sha256"]
            continue
        out[path] = _hash_file(Path(key))
        cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": out[path]}
        changed = True
    if changed:
        # merge with what another process may have written meanwhile; ours wins for the files hashed here
        merged = {**_read_cache(cache_file), **{str(p.resolve()): cache[str(p.resolve())] for p in paths}}
        _write_cache(cache_file, merged)
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of one file, through the hash cache."""
    p = Path(path)
    return _cached_hashes([p])[p]


def _source_identity(source: Source) -> dict[str, Any]:
    try:
        return _identity(source)
    except OSError as exc:  # unreadable weights: the same exit as a load that cannot read them
        raise ModelLoadError(f"{source.component}: cannot read {exc.filename or source.path} to hash it: "
                             f"{exc.strerror or exc}") from exc


def _identity(source: Source) -> dict[str, Any]:
    if source.repo_id is not None:
        ident: dict[str, Any] = {"source": "hub", "repo": source.repo_id}
        if source.component == "noise_predictor":
            ident["file"] = source.files[0][0]
        ident["revision"] = source.revision
        return ident
    if source.path is None or source.missing:
        return {"source": "local", "path": str(source.path or source.spec), "sha256": None}
    if source.path.is_file():
        return {"source": "local", "path": str(source.path), "sha256": file_sha256(source.path)}
    present = sorted((name, path) for name, path, _ in source.files if path is not None)
    hashes = _cached_hashes([path for _, path in present])
    h = hashlib.sha256()
    for name, path in present:
        h.update(f"{name}\0{hashes[path]}\n".encode())
    return {"source": "local", "path": str(source.path), "sha256": h.hexdigest()}


def identity_of(weights: Any) -> dict[str, Any]:
    """The identity of resolved :class:`~invsr_cli.engine.weights.Weights` (see the module docstring)."""
    return {"sd_model": _source_identity(weights.sd_model),
            "noise_predictor": _source_identity(weights.noise_predictor)}


def model_identity(sd_model: str = DEFAULT_SD_MODEL, noise_predictor: str | None = None) -> dict[str, Any]:
    """The identity of the weights ``sd_model`` and ``noise_predictor`` name (the settings' values; None = the
    default noise predictor), for run manifests. Never loads a model and never touches the network."""
    return identity_of(resolve(sd_model, noise_predictor, fetch=False))
