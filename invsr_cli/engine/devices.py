"""Where and in what precision the models run: ``auto`` and explicit device / dtype choices, validated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invsr_cli.base.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resolve_device", "resolve_dtype"]


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
