"""Where the weights are: one :func:`resolve` for loading, ``invsr models download``, ``invsr models info`` and the
model identity of run manifests.

Components (METHOD.md): SD-Turbo in the diffusers layout (``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) and the InvSR noise predictor checkpoint.

* Sources: a local diffusers folder or a Hub id ``owner/name[@revision]`` for SD-Turbo; a local file or
  ``"REPO[@revision]:FILE"`` for the noise predictor (default ``OAOA/InvSR:noise_predictor_sd_turbo_v5.pth``).
* Hub files live in huggingface_hub's own cache and follow its settings: ``huggingface_hub.constants.HF_HUB_CACHE``
  and ``HF_HUB_OFFLINE`` (from ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` in the environment, which
  huggingface_hub reads when it is imported), so invsr shares the cache with other diffusers tools.
* ``resolve(..., fetch=False)`` only looks (the filesystem; never the network); ``fetch=True`` downloads what is
  missing unless offline. :meth:`Weights.require` raises :class:`WeightsUnavailableError` naming the missing files,
  where they were looked for and how to get them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invsr_cli.base.errors import WeightsUnavailableError

__all__ = [
    "DEFAULT_SD_MODEL",
    "DEFAULT_NP_REPO",
    "NOISE_PREDICTOR_NAMES",
    "DEFAULT_NP_FILE",
    "DEFAULT_NOISE_PREDICTOR",
    "REQUIRED_HUB_FILES",
    "Source",
    "Weights",
    "hub_cache_dir",
    "is_offline",
    "resolve",
    "download_models",
    "models_info",
]

DEFAULT_SD_MODEL = "stabilityai/sd-turbo"
DEFAULT_NP_REPO = "OAOA/InvSR"
DEFAULT_NP_FILE = "noise_predictor_sd_turbo_v5.pth"
DEFAULT_NOISE_PREDICTOR = f"{DEFAULT_NP_REPO}:{DEFAULT_NP_FILE}"
#: The authors' two published noise predictors by short name (``--noise-predictor v5_diftune``).
NOISE_PREDICTOR_NAMES = {
    "v5": DEFAULT_NOISE_PREDICTOR,
    "v5_diftune": f"{DEFAULT_NP_REPO}:noise_predictor_sd_turbo_v5_diftune.pth",
}

_CONFIGS = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
)
_TOKENIZER = (
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
)
_OPTIONAL = {"model_index.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"}
# Weight file per component: base name and formats, in order of preference (a Hub fetch takes the first, fp32
# safetensors, which serve every dtype; a local folder may hold any of them, or an fp16 variant, or shards).
WEIGHT_FILES = {
    "text_encoder": ("model", ("safetensors", "bin")),
    "unet": ("diffusion_pytorch_model", ("safetensors", "bin")),
    "vae": ("diffusion_pytorch_model", ("safetensors", "bin")),
}
_HUB_FILES = (
    *_CONFIGS,
    *_TOKENIZER,
    *(f"{comp}/{base}.{exts[0]}" for comp, (base, exts) in WEIGHT_FILES.items()),
)
# The files a Hub SD model must have (the loader requires them; `make test-all` checks the cache for them).
REQUIRED_HUB_FILES = tuple(f for f in _HUB_FILES if f not in _OPTIONAL)
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_LOCAL_PATHS = "pass local paths (--sd-model DIR, a diffusers SD-Turbo folder; --noise-predictor FILE)"
REACH_TIMEOUT = 3.0  # seconds: one look at whether the Hub answers before any download is tried


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder (``huggingface_hub.constants.HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else huggingface_hub's offline mode (``HF_HUB_OFFLINE``)."""
    if offline is not None:
        return bool(offline)
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@dataclass(frozen=True)
class Source:
    """Where one model's files are, or were looked for.

    ``repo_id`` is the Hub repo (None for a local path); ``revision`` the commit of the cached snapshot that was
    found (None when none was); ``path`` the folder (SD) or file (noise predictor) found, or None; ``files`` each
    file invsr reads as ``(name, path or None, required)``; ``where`` says where they were looked for."""

    component: str
    spec: str
    repo_id: str | None
    revision: str | None
    path: Path | None
    files: tuple[tuple[str, Path | None, bool], ...]
    where: str
    cause: str = ""  # why a fetch failed, or that it was not tried (offline, or the Hub does not answer)
    offline: bool = False  # huggingface_hub's offline mode was on

    @property
    def missing(self) -> list[str]:
        return [name for name, path, required in self.files if required and path is None]

    @property
    def complete(self) -> bool:
        return self.path is not None and not self.missing

    def problem(self) -> str:
        """What is missing and where it was looked for (and why it was not fetched), for messages."""
        what = "noise predictor" if self.component == "noise_predictor" else f"SD model {self.spec}"
        return f"{what}: missing file(s) {', '.join(self.missing)}; looked in {self.where}.{self.cause}"

    def require(self) -> Path:
        """The folder or file; :class:`WeightsUnavailableError` when a required file is missing."""
        if self.complete:
            return self.path
        raise WeightsUnavailableError(f"{self.problem()} {_advice([self])}")


def _advice(missing: list[Source]) -> str:
    """Only what applies: offline mode is mentioned only when it is on, the Hub only for Hub sources."""
    hub = [s for s in missing if s.repo_id is not None]
    if not hub:
        return f"Check the path, or {_LOCAL_PATHS.replace('pass', 'give', 1)}."
    if any(s.offline for s in hub):
        return ("To get them: run `invsr models download` on a machine that is online, or unset HF_HUB_OFFLINE so "
                f"they are fetched on first use, or {_LOCAL_PATHS}.")
    return f"To get them: run `invsr models download` once the Hub can be reached, or {_LOCAL_PATHS}."


@dataclass(frozen=True)
class Weights:
    """The two sources invsr needs (what :func:`resolve` returns)."""

    sd_model: Source
    noise_predictor: Source

    def require(self) -> tuple[Path, Path]:
        """``(SD folder, noise predictor file)``; :class:`WeightsUnavailableError` naming every missing file of
        both, with the advice that applies, when anything is missing."""
        missing = [s for s in (self.sd_model, self.noise_predictor) if not s.complete]
        if missing:
            raise WeightsUnavailableError(" ".join(s.problem() for s in missing) + " "
                                          + _advice(missing))
        return self.sd_model.path, self.noise_predictor.path


# ----------------------------------------------------------------------------------------------------------
# parsing


def _looks_like_path(spec: str) -> bool:
    """True for strings that can only be file paths (never a Hub id like ``owner/name``)."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or bool(re.match(r"^[A-Za-z]:", spec))


def _hub_repo(spec: str) -> tuple[str, str | None] | None:
    """``owner/name[@revision]`` -> (repo id, revision or None); None when ``spec`` is not a Hub id."""
    if _looks_like_path(spec):
        return None
    repo, _, revision = spec.partition("@")
    return (repo, revision or None) if _REPO_ID_RE.match(repo) else None


def _cause(exc: BaseException | None, offline: bool, unreachable: str | None = None) -> str:
    if offline:
        return " Not fetched: offline mode (HF_HUB_OFFLINE)."
    if unreachable is not None:
        return f" Not fetched: {unreachable}."
    if exc is None:
        return ""
    reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else ""
    return f" Could not fetch them: {type(exc).__name__}{': ' + reason if reason else ''}."


def _snapshot_commit(path: Path) -> str | None:
    """The commit of a file or snapshot folder in huggingface_hub's cache layout (``.../snapshots/<commit>/...``)."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _cached(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """A file of a Hub repo in the local cache, or None: a filesystem lookup, never a connection."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


# ----------------------------------------------------------------------------------------------------------
# SD-Turbo folder


def weights_file(folder: Path) -> Path | None:
    """The weight file (or shard index) of one component folder (``vae``, ``unet``, ``text_encoder``), or None."""
    base, exts = WEIGHT_FILES[folder.name]
    for ext in exts:
        for name in (f"{base}.{ext}", f"{base}.{ext}.index.json", f"{base}.fp16.{ext}",
                     f"{base}.fp16.{ext}.index.json"):
            if (folder / name).is_file():
                return folder / name
    return None


def _sd_files(root: Path | None) -> tuple[tuple[str, Path | None, bool], ...]:
    """Every file invsr reads from an SD folder, found or not (``root`` None: nothing found)."""

    def at(rel: str) -> Path | None:
        return root / rel if root is not None and (root / rel).is_file() else None

    files = [(rel, at(rel), rel not in _OPTIONAL) for rel in _CONFIGS]
    for comp, (base, exts) in WEIGHT_FILES.items():
        found = weights_file(root / comp) if root is not None else None
        if found is None:
            files.append((f"{comp}/{base}.{exts[0]}", None, True))
            continue
        files.append((f"{comp}/{found.name}", found, True))
        if found.name.endswith(".index.json"):  # a sharded checkpoint: the shards are weights too
            try:
                shards = json.loads(found.read_text(encoding="utf-8")).get("weight_map", {}).values()
            except (OSError, ValueError, AttributeError):
                shards = []  # an unreadable index: loading reports it, naming the file
            files += [(f"{comp}/{s}", at(f"{comp}/{s}"), True) for s in sorted(set(shards))]
    fast = at("tokenizer/tokenizer.json")
    for rel in _TOKENIZER:  # vocab.json + merges.txt, or a fast tokenizer.json instead of them
        files.append((rel, at(rel), rel not in _OPTIONAL and fast is None))
    if fast is not None:
        files.append(("tokenizer/tokenizer.json", fast, True))
    return tuple(files)


def _resolve_sd(spec: str, fetch: bool, offline: bool, path_only: bool, unreachable: str | None = None) -> Source:
    local = Path(spec).expanduser()
    hub = None if local.is_dir() or path_only else _hub_repo(spec)
    if hub is None:
        root = local.resolve() if local.is_dir() else None
        where = str(local) if root else f"{local} (no such folder, and not a Hub id)"
        files = _sd_files(root) if root else (("(the whole folder)", None, True),)
        return Source("sd_model", spec, None, None, root, files, where)

    repo_id, revision = hub
    cache = hub_cache_dir()
    where = f"the Hugging Face cache {cache} (repo {repo_id}{'@' + revision if revision else ''}"
    exc: BaseException | None = None
    root = None
    if fetch and not offline and unreachable is None:
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                          allow_patterns=list(_HUB_FILES)))
        except Exception as e:  # any hub/network/cache failure -> one specific, explained error
            exc = e
    if root is None:
        for rel in ("unet/config.json", "vae/config.json", "text_encoder/config.json",
                    "scheduler/scheduler_config.json"):  # any file locates the snapshot folder of that revision
            found = _cached(repo_id, rel, revision)
            if found is not None:
                root = found.parents[len(Path(rel).parts) - 1]
                break
    where += ", offline mode)" if offline else ")"
    where += f", snapshot {root}" if root else f", and no local folder {local}"
    files = _sd_files(root) if root else tuple((rel, None, rel not in _OPTIONAL) for rel in _HUB_FILES)
    revision_found = _snapshot_commit(root) if root else None
    cause = _cause(exc, offline and fetch, unreachable if fetch else None)
    return Source("sd_model", spec, repo_id, revision_found, root, files, where, cause, offline)


# ----------------------------------------------------------------------------------------------------------
# noise predictor


def _np_repo_file(spec: str) -> tuple[str, str | None, str] | None:
    """``"REPO[@revision]:FILE"`` -> (repo, revision, file); None when ``spec`` is not of that form."""
    repo, sep, filename = spec.partition(":")
    hub = _hub_repo(repo) if sep and filename else None
    return (hub[0], hub[1], filename) if hub else None


def _resolve_np(spec: str, fetch: bool, offline: bool, path_only: bool, unreachable: str | None = None) -> Source:
    local = Path(spec).expanduser()
    if not path_only and spec in NOISE_PREDICTOR_NAMES and not local.is_file():  # a file of that name wins
        spec = NOISE_PREDICTOR_NAMES[spec]
    parsed = None if local.is_file() or path_only else _np_repo_file(spec)
    if parsed is None:
        path = local.resolve() if local.is_file() else None
        where = str(local) if path else f"{local} (no such file, and not 'REPO:FILE')"
        return Source("noise_predictor", spec, None, None, path, ((str(local), path, True),), where)

    repo_id, revision, filename = parsed
    cache = hub_cache_dir()
    exc: BaseException | None = None
    path = None
    if fetch and not offline and unreachable is None:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache))
        except Exception as e:  # any hub/network/cache failure -> one specific, explained error
            exc = e
    path = path or _cached(repo_id, filename, revision)
    repo = f"{repo_id}{'@' + revision if revision else ''}"
    where = f"the Hugging Face cache {cache} (repo {repo}{', offline mode' if offline else ''})"
    return Source("noise_predictor", spec, repo_id, _snapshot_commit(path) if path else None, path,
                  ((filename, path, True),), where, _cause(exc, offline and fetch, unreachable if fetch else None),
                  offline)


# ----------------------------------------------------------------------------------------------------------
# the one entry point, and the two commands built on it


def resolve(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    noise_predictor: str | os.PathLike | None = None,
    *,
    fetch: bool = False,
    offline: bool | None = None,
) -> Weights:
    """Find the weights: local paths as given, Hub ids in huggingface_hub's cache. ``fetch=False`` never
    touches the network. ``fetch=True`` looks locally first too, then, unless offline and only for the sources
    that are incomplete, asks the Hub once whether it answers (:data:`REACH_TIMEOUT` seconds, no retries) and
    downloads only if it does. Never raises for missing files: :meth:`Weights.require` does. A
    :class:`~pathlib.Path` argument is always a local path."""
    off = is_offline(offline)
    sd_spec = os.fspath(sd_model)
    np_spec = DEFAULT_NOISE_PREDICTOR if noise_predictor is None else os.fspath(noise_predictor)
    sd_path, np_path = isinstance(sd_model, Path), isinstance(noise_predictor, Path)
    found = Weights(_resolve_sd(sd_spec, False, off, sd_path), _resolve_np(np_spec, False, off, np_path))
    missing = [s for s in (found.sd_model, found.noise_predictor) if not s.complete and s.repo_id is not None]
    if not fetch or not missing:
        return found
    unreachable = None if off else hub_unreachable()
    sd, np_ = found.sd_model, found.noise_predictor
    if not sd.complete and sd.repo_id is not None:
        sd = _resolve_sd(sd_spec, True, off, sd_path, unreachable)
    if not np_.complete and np_.repo_id is not None:
        np_ = _resolve_np(np_spec, True, off, np_path, unreachable)
    return Weights(sd, np_)


def hub_unreachable(timeout: float = REACH_TIMEOUT) -> str | None:
    """None when the Hub (``huggingface_hub.constants.ENDPOINT``, so ``HF_ENDPOINT``) answers one request within
    ``timeout`` seconds (any HTTP status counts), else why not, in a few words. One try: huggingface_hub's own
    downloads retry a dead connection five times with back-off, about 20 s, before they give up."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except Exception as e:  # any connection failure: the reason goes into the message
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        return f"cannot reach {constants.ENDPOINT} within {timeout:g} s ({reason})"
    return None


def download_models(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    noise_predictor: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
) -> dict[str, str]:
    """Fetch (or find) every file invsr needs; returns ``{"sd_model": folder, "noise_predictor": file}``."""
    sd_dir, np_path = resolve(sd_model, noise_predictor, fetch=True, offline=offline).require()
    return {"sd_model": str(sd_dir), "noise_predictor": str(np_path)}


def models_info(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    noise_predictor: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """What is where, without downloading: one dict per file (``name``, ``where``, ``present``, ``size`` bytes,
    and ``component``, ``spec``, ``file``, ``required``, ``looked_in``: the source's search place)."""
    weights = resolve(sd_model, noise_predictor)
    rows = []
    for source in (weights.sd_model, weights.noise_predictor):
        for name, path, required in source.files:
            label = f"{source.spec}/{name}" if source.component == "sd_model" else source.spec
            rows.append({
                "name": label,
                "where": str(path) if path else source.where,
                "present": path is not None,
                "size": path.stat().st_size if path else None,
                "component": source.component,
                "spec": source.spec,
                "file": name,
                "required": required,
                "looked_in": source.where,
            })
    return rows
