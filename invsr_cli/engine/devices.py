"""Where and in what precision the models run: ``auto`` and explicit device / dtype choices, validated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invsr_cli.base.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DEVICE_FORMS", "DTYPE_ALIASES", "parse_device", "canonical_dtype", "resolve_device", "resolve_dtype",
           "dtype_name"]

DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"


def parse_device(text: str) -> str:
    """The one device-string parser (settings, ``--devices`` entries, the engine): ``auto``, ``cpu``, ``mps``,
    ``cuda`` or ``cuda:N``, lower-cased and stripped. Raises ValueError naming the allowed forms. Pure: whether
    the device exists is :func:`resolve_device`'s question."""
    s = str(text).strip().lower()
    base, colon, num = s.partition(":")
    if (not colon and base in ("auto", "cpu", "cuda", "mps")) or (base == "cuda" and colon and num.isdigit()):
        return s
    raise ValueError(f"must be one of {DEVICE_FORMS}, got {text!r}")


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
            dev = torch.device(parse_device(device))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ConfigError(f"`device` must be auto, cpu, cuda[:N] or mps, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`device` {device!r} requested but CUDA is not available (use auto or cpu)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"`device` {device!r} requested but MPS is not available (use auto or cpu)")
    return dev


# The one set of dtype names: the aliases users may write, each to its canonical name (what settings keep), and
# each canonical name to its torch dtype.
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def canonical_dtype(name: str) -> str:
    """``float16``/``half`` -> ``fp16`` and so on (lower-cased); other names as they are (validation is the
    caller's)."""
    s = str(name).lower()
    return DTYPE_ALIASES.get(s, s)


def dtype_name(dtype: object) -> str:
    """``torch.float32`` -> ``"fp32"`` (the names the settings and every message use); other values as text."""
    return canonical_dtype(str(dtype).removeprefix("torch."))


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: fp16 on CUDA and MPS, fp32 on CPU; else fp32 / fp16 / bf16 (or a torch dtype)."""
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"`dtype` must be fp32, fp16 or bf16, got {dtype}")
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    name = _TORCH_DTYPES.get(canonical_dtype(dtype))
    if name is None:
        raise ConfigError(f"`dtype` must be auto, fp32, fp16 or bf16, got {dtype!r}")
    return getattr(torch, name)
