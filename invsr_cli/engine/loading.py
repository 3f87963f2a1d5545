"""Strict loading of every component, from the files :func:`invsr_cli.engine.weights.resolve` found.

* The weights go straight into modules built without a random init (accelerate's empty-weights init in diffusers,
  the meta device in transformers and for the noise predictor).
* Loading is strict: diffusers and transformers only *warn* about missing or unexpected keys; here any missing,
  unexpected or mismatched key raises :class:`ModelLoadError` naming the component, the weight file and the keys.
  As a second, conversion-independent check the number and total size of the floating-point tensors in the
  safetensors files must equal the model's, and no tensor may be left on the meta device.
* Attention runs on PyTorch SDPA (diffusers ``AttnProcessor2_0``, transformers ``attn_implementation="sdpa"``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invsr_cli.base.errors import ModelLoadError
from invsr_cli.engine.devices import resolve_device, resolve_dtype
from invsr_cli.engine.weights import DEFAULT_SD_MODEL, resolve, weights_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Components", "load_components", "strict_from_pretrained", "check_loaded", "set_sdpa_attention"]

_LIBRARY_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, json.JSONDecodeError)
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


@dataclass
class Components:
    """Loaded models, ready on their device. ``identity`` names the weights (see :mod:`invsr_cli.engine.identity`)."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    noise_predictor: Any
    identity: dict[str, Any] = field(default_factory=dict)


def set_sdpa_attention(*models: Any) -> None:
    """Make every diffusers ``Attention`` layer in ``models`` use PyTorch SDPA (``AttnProcessor2_0``)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    for model in models:
        for module in model.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor2_0())


# ----------------------------------------------------------------------------------------------------------
# the checks


def _safetensors_files(weights: Path) -> list[Path] | None:
    if weights.name.endswith(".safetensors"):
        return [weights]
    if weights.name.endswith(".safetensors.index.json"):
        index = json.loads(weights.read_text(encoding="utf-8"))
        return sorted({weights.parent / f for f in index.get("weight_map", {}).values()})
    return None  # .bin: only the library's own report applies


def _float_tensor_totals(files: list[Path]) -> tuple[int, int]:
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
    """diffusers and transformers report (key, checkpoint shape, model shape); others a plain key."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, ckpt, model = entry
        return f"{key} (checkpoint {tuple(ckpt)}, model {tuple(model)})"
    return str(entry)


def _library_error(component: str, weights: Path, exc: BaseException) -> ModelLoadError:
    """A library exception -> ModelLoadError; size mismatches are listed by key, without library advice."""
    text = str(exc)
    sizes = re.findall(  # torch's load_state_dict (diffusers without accelerate)
        r"size mismatch for (\S+): copying a param with shape (.+?) from checkpoint, "
        r"the shape in current model is (.+?)\.?\s*$",
        text,
        re.M,
    )
    sizes += [(k, c, m) for k, m, c in re.findall(  # diffusers loading into empty weights (accelerate)
        r"because (\S+) expected shape (torch\.Size\(\[.*?\]\)), but got (torch\.Size\(\[.*?\]\))", text)]
    if sizes:

        def shape(s: str) -> str:
            m = re.fullmatch(r"torch\.Size\(\[(.*)\]\)", s.strip())
            return f"({m.group(1)})" if m else s

        listed = ", ".join(f"{k} (checkpoint {shape(c)}, model {shape(m)})" for k, c, m in sizes)
        return ModelLoadError(f"{component}: {weights} does not match the model exactly; mismatched shapes: {listed}")
    return ModelLoadError(f"{component}: cannot load {weights}: {text}")


def check_loaded(component: str, weights: Path, model: Any, info: dict) -> None:
    """Raise :class:`ModelLoadError` for any missing / unexpected / mismatched key the library reported in
    ``info``, for a tensor left on the meta device, or for a difference between the floating-point tensors in the
    safetensors ``weights`` (a file or a shard index) and in the model."""
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
    state = model.state_dict()
    unset = sorted(k for k, v in state.items() if v.is_meta)
    if unset and not problems:
        problems.append(f"weights left unset: {', '.join(unset)}")
    if problems:
        raise ModelLoadError(f"{component}: {weights} does not match the model exactly; " + "; ".join(problems))

    files = _safetensors_files(weights)
    if files is None:
        return
    file_count, file_total = _float_tensor_totals(files)
    model_count = sum(1 for v in state.values() if v.is_floating_point())
    model_total = sum(v.numel() for v in state.values() if v.is_floating_point())
    if (file_count, file_total) != (model_count, model_total):
        raise ModelLoadError(
            f"{component}: {weights}: the weight files hold {file_count} tensors ({file_total} values) but the "
            f"model has {model_count} ({model_total} values): some weights were silently dropped or left unset"
        )


# ----------------------------------------------------------------------------------------------------------
# loading


def strict_from_pretrained(cls: Any, folder: Path, component: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder, **kwargs)`` (a diffusers or transformers model class), local files only,
    then :func:`check_loaded`. Library errors become :class:`ModelLoadError` naming the weight file."""
    weights = weights_file(folder)
    if weights is None:  # resolve() checked; a race, or a caller that bypassed it
        raise ModelLoadError(f"{component}: no weight file in {folder}")
    try:
        model, info = cls.from_pretrained(
            str(folder),
            variant="fp16" if ".fp16." in weights.name else None,
            use_safetensors=weights.name.endswith((".safetensors", ".safetensors.index.json")),
            output_loading_info=True,
            local_files_only=True,
            **kwargs,
        )
    except _LIBRARY_ERRORS as exc:
        raise _library_error(component, weights, exc) from exc
    check_loaded(component, weights, model, info)
    return model


def _load_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except _LIBRARY_ERRORS as exc:
        raise ModelLoadError(f"tokenizer: cannot load {folder}: {exc}") from exc


def _load_scheduler(folder: Path) -> Any:
    from diffusers import EulerDiscreteScheduler

    try:
        config = EulerDiscreteScheduler.load_config(str(folder), local_files_only=True)
        scheduler = EulerDiscreteScheduler.from_config(config)
    except _LIBRARY_ERRORS as exc:
        raise ModelLoadError(f"scheduler: cannot load {folder}: {exc}") from exc
    if scheduler.config.prediction_type != "epsilon":
        raise ModelLoadError(
            f"scheduler: {folder} has prediction_type {scheduler.config.prediction_type!r}; "
            "InvSR needs an epsilon-prediction model (SD-Turbo)"
        )
    return scheduler


def load_components(
    sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
    noise_predictor: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "fp32",
    vae_dtype: str | torch.dtype | None = None,
    offline: bool | None = None,
) -> Components:
    """Resolve (fetching unless offline) and strictly load every component onto ``device`` in ``dtype`` (the VAE
    in ``vae_dtype`` when given), with the weights' identity. Raises WeightsUnavailableError or ModelLoadError."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from invsr_cli.engine.identity import identity_of
    from invsr_cli.engine.noise_predictor import load_noise_predictor

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    vdt = dt if vae_dtype is None else resolve_dtype(vae_dtype, dev)
    weights = resolve(sd_model, noise_predictor, fetch=True, offline=offline)
    sd_dir, np_path = weights.require()

    vae = strict_from_pretrained(AutoencoderKL, sd_dir / "vae", "vae", torch_dtype=vdt)
    unet = strict_from_pretrained(UNet2DConditionModel, sd_dir / "unet", "unet", torch_dtype=dt)
    text_encoder = strict_from_pretrained(
        CLIPTextModel, sd_dir / "text_encoder", "text_encoder", dtype=dt, attn_implementation="sdpa",
        ignore_mismatched_sizes=True,  # so transformers reports mismatches by key in `info` (then refused)
    )
    tokenizer = _load_tokenizer(sd_dir / "tokenizer")
    scheduler = _load_scheduler(sd_dir / "scheduler")
    np_model = load_noise_predictor(np_path, device=dev, dtype=dt)
    for model in (vae, unet, text_encoder):
        model.requires_grad_(False).eval().to(device=dev)
    set_sdpa_attention(vae, unet, np_model)
    return Components(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                      noise_predictor=np_model, identity=identity_of(weights))
