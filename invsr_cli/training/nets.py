"""Strict loading of the training-only networks: the latent discriminator and the latent LPIPS.

Both are built on the meta device (no memory, no random init), checked key for key and shape for shape against the
file (``module.``/``_orig_mod.`` prefixes stripped, a nested ``state_dict`` unwrapped, nothing unpickled but tensors),
then the file's tensors are assigned in. A missing file names the command that fetches it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from invsr_cli.base.errors import ModelLoadError
from invsr_cli.engine.noise_predictor import load_noise_predictor_state
from invsr_cli.training.discriminator import DiscriminatorConfig, LatentDiscriminator
from invsr_cli.training.latent_lpips import LatentLPIPS

__all__ = ["load_discriminator", "load_latent_lpips", "load_strict", "FETCH_HINT"]

FETCH_HINT = "run `invsr models download --training` (or pass the file explicitly)"


def load_strict(model: nn.Module, path: str | Path, component: str) -> nn.Module:
    """Load ``path`` into the meta-device ``model`` strictly; returns it on the CPU in float32."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{component}: {path} does not exist; {FETCH_HINT}")
    state = load_noise_predictor_state(path, component=component)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"unexpected keys: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
    if bad:
        problems.append("shape mismatches: " + ", ".join(
            f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})" for k in bad[:8]))
    if problems:
        raise ModelLoadError(f"{component}: {path} does not match the architecture; " + "; ".join(problems))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # pragma: no cover - every parameter and buffer is in the state dict
        raise ModelLoadError(f"{component}: tensors not set from {path}: {', '.join(leftover)}")
    return model


def load_discriminator(path: str | Path, config: DiscriminatorConfig | None = None) -> LatentDiscriminator:
    with torch.device("meta"):
        model = LatentDiscriminator(config)
    return load_strict(model, path, "discriminator")


def load_latent_lpips(path: str | Path) -> LatentLPIPS:
    with torch.device("meta"):
        model = LatentLPIPS()
    # lin{k} and lins.{k} are one module: both keys are assigned to the same parameter
    return load_strict(model, path, "latent_lpips").requires_grad_(False).eval()
