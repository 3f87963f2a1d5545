"""Finding, fetching and strictly loading the weights InvSR needs.

Components (METHOD.md): SD-Turbo in the diffusers layout (``vae/`` AutoencoderKL, ``unet/`` UNet2DConditionModel,
``text_encoder/`` CLIPTextModel, ``tokenizer/`` CLIPTokenizer, ``scheduler/`` EulerDiscreteScheduler config) and the
InvSR noise predictor checkpoint.

* Sources: a local diffusers folder or a Hub id for SD-Turbo; a local file or ``"REPO:FILE"`` for the noise
  predictor (default ``OAOA/InvSR:noise_predictor_sd_turbo_v5.pth``). Hub files go through ``huggingface_hub`` into
  the standard cache (``HF_HUB_CACHE`` / ``HF_HOME``), shared with other diffusers tools. ``HF_HUB_OFFLINE`` and the
  cache location are read from the environment at call time (``huggingface_hub`` reads them only at import).
* Missing files that cannot be fetched raise :class:`WeightsUnavailableError` naming the files, where they were
  looked for and how to get them.
* Loading is strict: diffusers and transformers only *warn* about missing or unexpected keys (and initialise missing
  ones randomly); here any missing, unexpected or mismatched key raises :class:`ModelLoadError` naming the component
  and the keys. As a second, conversion-independent check the number and total size of the floating-point tensors
  in the safetensors files must equal the model's.
* Attention runs on PyTorch SDPA (diffusers ``AttnProcessor2_0``, transformers ``attn_implementation="sdpa"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invsr_cli.errors import ConfigError, ModelLoadError, WeightsUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_SD_MODEL",
    "DEFAULT_NP_REPO",
    "DEFAULT_NP_FILE",
    "DEFAULT_NOISE_PREDICTOR",
    "Components",
    "hub_cache_dir",
    "is_offline",
    "resolve_sd_model",
    "resolve_noise_predictor",
    "download_models",
    "models_info",
    "load_components",
    "resolve_device",
    "resolve_dtype",
    "set_sdpa_attention",
]

DEFAULT_SD_MODEL = "stabilityai/sd-turbo"
DEFAULT_NP_REPO = "OAOA/InvSR"
DEFAULT_NP_FILE = "noise_predictor_sd_turbo_v5.pth"
DEFAULT_NOISE_PREDICTOR = f"{DEFAULT_NP_REPO}:{DEFAULT_NP_FILE}"

# Files of a diffusers SD folder that invsr reads (fp32 safetensors: they serve every dtype).
_SD_HUB_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
_SD_OPTIONAL = {"model_index.json", "tokenizer/special_tokens_map.json"}
_SD_ANCHORS = (
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)
# Weight files accepted in a local folder, in order of preference: (file name, diffusers/transformers variant).
_WEIGHT_CANDIDATES = {
    "vae": ("diffusion_pytorch_model", ("safetensors", "bin")),
    "unet": ("diffusion_pytorch_model", ("safetensors", "bin")),
    "text_encoder": ("model", ("safetensors", "bin")),
}
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TRUE = {"1", "on", "yes", "true"}
_HOW_TO_GET = (
    "To get them: run `invsr models download` while online, or unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) "
    "so they are fetched on first use, or pass a local path (a diffusers SD-Turbo folder / a noise predictor file)."
)


@dataclass
class Components:
    """Loaded models, ready on their device. ``identity`` describes what was loaded (for run manifests)."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    noise_predictor: Any
    identity: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# environment


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment now (same rules as ``huggingface_hub.constants``)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "huggingface" / "hub"


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) from the environment now."""
    if offline is not None:
        return bool(offline)
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _looks_like_path(spec: str) -> bool:
    """True for strings that can only be file paths (never a Hub id like ``owner/name``)."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or bool(re.match(r"^[A-Za-z]:", spec))


def _repo_and_revision(spec: str) -> tuple[str, str | None]:
    repo, _, revision = spec.partition("@")
    return repo, (revision or None)


def _unavailable(
    what: str, files: list[str], where: str, cause: BaseException | None = None, offline: bool = False
) -> WeightsUnavailableError:
    msg = f"{what}: missing file(s) {', '.join(files)}; looked in {where}."
    if offline:
        msg += " Not fetched: offline mode (HF_HUB_OFFLINE=1 or offline=True)."
    elif cause is not None:
        reason = str(cause).strip().splitlines()[0].rstrip(".") if str(cause).strip() else ""
        msg += f" Could not fetch them: {type(cause).__name__}{': ' + reason if reason else ''}."
    return WeightsUnavailableError(f"{msg} {_HOW_TO_GET}")


# ----------------------------------------------------------------------------------------------------------
# SD-Turbo folder


def _weights_file(folder: Path) -> Path | None:
    """The weight file (or shard index) of one component folder, or None."""
    base, exts = _WEIGHT_CANDIDATES[folder.name]
    for ext in exts:
        for name in (
            f"{base}.{ext}",
            f"{base}.{ext}.index.json",
            f"{base}.fp16.{ext}",
            f"{base}.fp16.{ext}.index.json",
        ):
            if (folder / name).is_file():
                return folder / name
    return None


def _missing_sd_files(root: Path) -> list[str]:
    missing = []
    for rel in (
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
    ):
        if not (root / rel).is_file():
            missing.append(rel)
    for comp in ("text_encoder", "unet", "vae"):
        if _weights_file(root / comp) is None:
            base, exts = _WEIGHT_CANDIDATES[comp]
            missing.append(f"{comp}/{base}.{exts[0]}")
    tok = root / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        missing += [f"tokenizer/{n}" for n in ("vocab.json", "merges.txt") if not (tok / n).is_file()]
    return missing


def resolve_sd_model(spec: str | os.PathLike = DEFAULT_SD_MODEL, *, offline: bool | None = None) -> Path:
    """A local diffusers SD folder for ``spec`` (a folder, or a Hub id ``owner/name[@revision]``), fetching the
    files invsr needs into the Hugging Face cache unless offline. Raises :class:`WeightsUnavailableError`."""
    spec_s = os.fspath(spec)
    local = Path(spec_s).expanduser()
    if local.is_dir():
        missing = _missing_sd_files(local)
        if missing:
            raise _unavailable(f"SD model folder {local}", missing, str(local))
        return local.resolve()
    if (
        isinstance(spec, Path)
        or _looks_like_path(spec_s)
        or not _REPO_ID_RE.match(_repo_and_revision(spec_s)[0])
    ):
        raise _unavailable(
            f"SD model {spec_s!r}", ["(the whole folder)"], f"{local} (no such folder, and not a Hub id)"
        )
    repo_id, revision = _repo_and_revision(spec_s)
    cache = hub_cache_dir()
    off = is_offline(offline)
    if off:
        return _sd_from_cache(spec_s, repo_id, revision, cache, local)
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                allow_patterns=list(_SD_HUB_FILES),
            )
        )
    except Exception as exc:  # any hub/network/cache failure -> one specific, explained error
        files = [f for f in _SD_HUB_FILES if f not in _SD_OPTIONAL]
        where = f"the Hugging Face cache {cache} (repo {repo_id}{'@' + revision if revision else ''})"
        raise _unavailable(f"SD model {spec_s}", files, f"{where}, and no local folder {local}", exc) from exc
    missing = _missing_sd_files(path)
    if missing:
        raise _unavailable(f"SD model {spec_s}", missing, f"the Hugging Face cache {cache} (snapshot {path})")
    return path


def _cached_file(repo_id: str, filename: str, revision: str | None, cache: Path) -> Path | None:
    """A file of a Hub repo in the local cache, or None. Pure filesystem: offline means no connection at all
    (``hf_hub_download(local_files_only=True)`` may still contact the Hub while building its request headers)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _sd_from_cache(spec_s: str, repo_id: str, revision: str | None, cache: Path, local: Path) -> Path:
    """The cached snapshot folder of ``repo_id`` holding every file invsr needs (same rule as online)."""
    where = (
        f"the Hugging Face cache {cache} (repo {repo_id}{'@' + revision if revision else ''}, offline mode)"
    )
    root = None
    for rel in _SD_ANCHORS:  # any file locates the snapshot folder of that revision
        path = _cached_file(repo_id, rel, revision, cache)
        if path is not None:
            root = path
            for _ in Path(rel).parts:
                root = root.parent
            break
    missing = _missing_sd_files(root if root is not None else cache / "nonexistent")
    if missing:
        where += f", and no local folder {local}" if root is None else f", snapshot {root}"
        raise _unavailable(f"SD model {spec_s}", missing, where, offline=True)
    return root


# ----------------------------------------------------------------------------------------------------------
# noise predictor


def _parse_np_spec(spec: str) -> tuple[str, str] | None:
    """``"REPO:FILE"`` -> (repo, file); None when ``spec`` is not of that form."""
    if _looks_like_path(spec) or ":" not in spec:
        return None
    repo, _, filename = spec.partition(":")
    if not _REPO_ID_RE.match(_repo_and_revision(repo)[0]) or not filename:
        return None
    return repo, filename


def resolve_noise_predictor(spec: str | os.PathLike | None = None, *, offline: bool | None = None) -> Path:
    """A local file for the noise predictor: ``spec`` as a path, or ``"REPO:FILE"`` (default
    ``OAOA/InvSR:noise_predictor_sd_turbo_v5.pth``) fetched into the Hugging Face cache unless offline."""
    spec_s = DEFAULT_NOISE_PREDICTOR if spec is None else os.fspath(spec)
    local = Path(spec_s).expanduser()
    if local.is_file():
        return local.resolve()
    parsed = None if isinstance(spec, Path) else _parse_np_spec(spec_s)
    if parsed is None:
        raise _unavailable("noise predictor", [str(local)], f"{local} (no such file, and not 'REPO:FILE')")
    repo, filename = parsed
    repo_id, revision = _repo_and_revision(repo)
    cache = hub_cache_dir()
    off = is_offline(offline)
    if off:
        path = _cached_file(repo_id, filename, revision, cache)
        if path is None:
            raise _unavailable(
                "noise predictor",
                [filename],
                f"the Hugging Face cache {cache} (repo {repo}, offline mode)",
                offline=True,
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache))
    except Exception as exc:  # any hub/network/cache failure -> one specific, explained error
        raise _unavailable(
            "noise predictor", [filename], f"the Hugging Face cache {cache} (repo {repo})", exc
        ) from exc


# ----------------------------------------------------------------------------------------------------------
# pre-fetch and inventory


def download_models(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    noise_predictor: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
) -> dict[str, str]:
    """Fetch (or find) every file invsr needs; returns ``{"sd_model": folder, "noise_predictor": file}``."""
    return {
        "sd_model": str(resolve_sd_model(sd_model, offline=offline)),
        "noise_predictor": str(resolve_noise_predictor(noise_predictor, offline=offline)),
    }


def _file_entry(name: str, path: Path | None, where: str) -> dict[str, Any]:
    present = path is not None and path.is_file()
    return {
        "name": name,
        "where": str(path) if present else where,
        "present": present,
        "size": path.stat().st_size if present else None,
    }


def models_info(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    noise_predictor: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """What is where, without downloading: one dict per file (``name``, ``where``, ``present``, ``size`` bytes)."""
    from huggingface_hub import try_to_load_from_cache

    out: list[dict[str, Any]] = []
    cache = hub_cache_dir()
    sd_s = os.fspath(sd_model)
    local = Path(sd_s).expanduser()
    is_local = local.is_dir() or isinstance(sd_model, Path) or _looks_like_path(sd_s)
    for rel in _SD_HUB_FILES:
        name = f"{sd_s}/{rel}"
        if is_local:
            path: Path | None = local / rel
            comp = rel.split("/")[0]
            if comp in _WEIGHT_CANDIDATES and rel.endswith(".safetensors") and local.is_dir():
                path = _weights_file(local / comp) or path
            out.append(_file_entry(name, path, str(local / rel)))
            continue
        repo_id, revision = _repo_and_revision(sd_s)
        found = try_to_load_from_cache(repo_id, rel, cache_dir=cache, revision=revision)
        out.append(_file_entry(name, Path(found) if isinstance(found, str) else None, f"{cache} ({repo_id})"))

    np_s = DEFAULT_NOISE_PREDICTOR if noise_predictor is None else os.fspath(noise_predictor)
    parsed = None if isinstance(noise_predictor, Path) else _parse_np_spec(np_s)
    if Path(np_s).expanduser().is_file() or parsed is None:
        out.append(_file_entry(np_s, Path(np_s).expanduser(), str(Path(np_s).expanduser())))
    else:
        repo_id, revision = _repo_and_revision(parsed[0])
        found = try_to_load_from_cache(repo_id, parsed[1], cache_dir=cache, revision=revision)
        out.append(_file_entry(np_s, Path(found) if isinstance(found, str) else None, f"{cache} ({repo_id})"))
    return out


# ----------------------------------------------------------------------------------------------------------
# devices and dtypes


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA, then MPS, then CPU. Otherwise any torch device string; unavailable ones -> ConfigError."""
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"`device` must be auto, cpu, cuda[:N] or mps, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`device` {device!r} requested but CUDA is not available (use auto or cpu)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"`device` {device!r} requested but MPS is not available (use auto or cpu)")
    return dev


_DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: fp16 on CUDA and MPS, fp32 on CPU; else fp32 / fp16 / bf16 (or a torch dtype)."""
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"`dtype` must be fp32, fp16 or bf16, got {dtype}")
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise ConfigError(f"`dtype` must be auto, fp32, fp16 or bf16, got {dtype!r}")
    return getattr(torch, name)


# ----------------------------------------------------------------------------------------------------------
# strict loading


def set_sdpa_attention(*models: Any) -> None:
    """Make every diffusers ``Attention`` layer in ``models`` use PyTorch SDPA (``AttnProcessor2_0``)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    for model in models:
        for module in model.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor2_0())


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _safetensors_files(weights: Path) -> list[Path] | None:
    if weights.name.endswith(".safetensors"):
        return [weights]
    if weights.name.endswith(".safetensors.index.json"):
        index = json.loads(weights.read_text(encoding="utf-8"))
        return sorted({weights.parent / f for f in index.get("weight_map", {}).values()})
    return None  # .bin: only the library's own report applies


def _float_tensor_totals_in_files(files: list[Path]) -> tuple[int, int]:
    from safetensors import safe_open

    count = total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                sl = f.get_slice(key)
                if sl.get_dtype() in _FLOAT_DTYPES:
                    n = 1
                    for d in sl.get_shape():
                        n *= int(d)
                    count += 1
                    total += n
    return count, total


def _describe_mismatch(entry: Any) -> str:
    """transformers reports (key, checkpoint shape, model shape); others a plain key."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, ckpt, model = entry
        return f"{key} (checkpoint {tuple(ckpt)}, model {tuple(model)})"
    return str(entry)


def _load_error(component: str, folder: Path, exc: BaseException) -> ModelLoadError:
    """A library exception -> ModelLoadError; size mismatches are listed by key, without library advice."""
    text = str(exc)
    sizes = re.findall(
        r"size mismatch for (\S+): copying a param with shape (.+?) from checkpoint, "
        r"the shape in current model is (.+?)\.?\s*$",
        text,
        re.M,
    )
    if sizes:

        def shape(s: str) -> str:
            m = re.fullmatch(r"torch\.Size\(\[(.*)\]\)", s.strip())
            return f"({m.group(1)})" if m else s

        listed = ", ".join(f"{k} (checkpoint {shape(c)}, model {shape(m)})" for k, c, m in sizes)
        return ModelLoadError(
            f"{component}: {folder} does not match the model exactly; mismatched shapes: {listed}"
        )
    return ModelLoadError(f"{component}: cannot load {folder}: {text}")


def _check_loaded(component: str, folder: Path, model: Any, info: dict, weights: Path) -> None:
    """Raise ModelLoadError for any missing / unexpected / mismatched key the library reported, or for a
    difference between the floating-point tensors in the files and in the model."""
    problems = []
    for label, key in (("missing keys", "missing_keys"), ("unexpected keys", "unexpected_keys")):
        keys = sorted(str(k) for k in (info.get(key) or ()))
        if keys:
            problems.append(f"{label}: {', '.join(keys)}")
    mismatched = info.get("mismatched_keys") or ()
    if mismatched:
        problems.append(f"mismatched shapes: {', '.join(sorted(_describe_mismatch(m) for m in mismatched))}")
    errors = [str(e) for e in (info.get("error_msgs") or ()) if str(e).strip()]
    if errors:
        problems.append(f"errors: {'; '.join(errors)}")
    if problems:
        raise ModelLoadError(
            f"{component}: {folder} does not match the model exactly; " + "; ".join(problems)
        )

    files = _safetensors_files(weights)
    if files is None:
        return
    file_count, file_total = _float_tensor_totals_in_files(files)
    state = model.state_dict()
    model_count = sum(1 for v in state.values() if v.is_floating_point())
    model_total = sum(v.numel() for v in state.values() if v.is_floating_point())
    if (file_count, file_total) != (model_count, model_total):
        raise ModelLoadError(
            f"{component}: {folder}: the weight files hold {file_count} tensors ({file_total} values) but the "
            f"model has {model_count} ({model_total} values): some weights were silently dropped or left unset"
        )


def _load_diffusers_model(cls: Any, folder: Path, component: str, dtype: torch.dtype) -> Any:
    weights = _weights_file(folder)
    if weights is None:  # resolve_sd_model checked; a race or a caller bypassing it
        raise ModelLoadError(f"{component}: no weight file in {folder}")
    variant = "fp16" if ".fp16." in weights.name else None
    try:
        model, info = cls.from_pretrained(
            str(folder),
            torch_dtype=dtype,
            variant=variant,
            use_safetensors=weights.name.endswith((".safetensors", ".safetensors.index.json")),
            output_loading_info=True,
            local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _load_error(component, folder, exc) from exc
    _check_loaded(component, folder, model, info, weights)
    return model


def _load_text_encoder(folder: Path, dtype: torch.dtype) -> Any:
    from transformers import CLIPTextModel

    weights = _weights_file(folder)
    if weights is None:
        raise ModelLoadError(f"text_encoder: no weight file in {folder}")
    variant = "fp16" if ".fp16." in weights.name else None
    try:
        model, info = CLIPTextModel.from_pretrained(
            str(folder),
            variant=variant,
            use_safetensors=weights.name.endswith((".safetensors", ".safetensors.index.json")),
            output_loading_info=True,
            local_files_only=True,
            attn_implementation="sdpa",
            ignore_mismatched_sizes=True,  # so mismatches are reported by key in `info` (then refused below)
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _load_error("text_encoder", folder, exc) from exc
    _check_loaded("text_encoder", folder, model, info, weights)
    return model.to(dtype=dtype)


def _load_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"tokenizer: cannot load {folder}: {exc}") from exc


def _load_scheduler(folder: Path) -> Any:
    from diffusers import EulerDiscreteScheduler

    try:
        config = EulerDiscreteScheduler.load_config(str(folder), local_files_only=True)
        scheduler = EulerDiscreteScheduler.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"scheduler: cannot load {folder}: {exc}") from exc
    if scheduler.config.prediction_type != "epsilon":
        raise ModelLoadError(
            f"scheduler: {folder} has prediction_type {scheduler.config.prediction_type!r}; "
            "InvSR needs an epsilon-prediction model (SD-Turbo)"
        )
    return scheduler


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sd_identity(spec: str, root: Path) -> dict[str, str]:
    """Cheap identity of an SD folder: the Hub snapshot revision when from the cache, and a fingerprint over the
    config files' contents and the weight files' names and sizes."""
    h = hashlib.sha256()
    for rel in sorted(_SD_HUB_FILES):
        comp = rel.split("/")[0]
        path = root / rel
        if comp in _WEIGHT_CANDIDATES and rel.endswith("safetensors"):
            path = _weights_file(root / comp) or path
        if not path.is_file():
            continue
        h.update(str(path.relative_to(root)).encode())
        if path.suffix == ".json" or path.suffix == ".txt":
            h.update(path.read_bytes())
        else:
            h.update(str(path.stat().st_size).encode())
    revision = root.name if root.parent.name == "snapshots" else "local"
    return {
        "sd_model": spec,
        "sd_model_path": str(root),
        "sd_model_revision": revision,
        "sd_model_fingerprint": h.hexdigest(),
    }


def load_components(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    noise_predictor: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "fp32",
    vae_dtype: str | torch.dtype | None = None,
    offline: bool | None = None,
) -> Components:
    """Resolve (fetching unless offline) and strictly load every component onto ``device`` in ``dtype``
    (the VAE in ``vae_dtype`` when given). Raises WeightsUnavailableError or ModelLoadError."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from invsr_cli.engine.noise_predictor import config_as_dict, load_noise_predictor

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    vdt = dt if vae_dtype is None else resolve_dtype(vae_dtype, dev)
    sd_dir = resolve_sd_model(sd_model, offline=offline)
    np_path = resolve_noise_predictor(noise_predictor, offline=offline)

    vae = _load_diffusers_model(AutoencoderKL, sd_dir / "vae", "vae", vdt)
    unet = _load_diffusers_model(UNet2DConditionModel, sd_dir / "unet", "unet", dt)
    text_encoder = _load_text_encoder(sd_dir / "text_encoder", dt)
    tokenizer = _load_tokenizer(sd_dir / "tokenizer")
    scheduler = _load_scheduler(sd_dir / "scheduler")
    np_model = load_noise_predictor(np_path, device=dev, dtype=dt)

    # dtypes were set at load (diffusers: torch_dtype; text encoder: cast in _load_text_encoder)
    for model in (vae, unet, text_encoder):
        model.requires_grad_(False).eval().to(device=dev)
    set_sdpa_attention(vae, unet, np_model)

    identity = _sd_identity(os.fspath(sd_model), sd_dir)
    identity.update(
        {
            "noise_predictor": DEFAULT_NOISE_PREDICTOR
            if noise_predictor is None
            else os.fspath(noise_predictor),
            "noise_predictor_path": str(np_path),
            "noise_predictor_sha256": _sha256(np_path),
            "noise_predictor_config": json.dumps(config_as_dict(np_model.config), sort_keys=True),
        }
    )
    return Components(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        noise_predictor=np_model,
        identity=identity,
    )
