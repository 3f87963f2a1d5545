"""The InvSR noise predictor: a time-conditioned VAE-style encoder built from stock diffusers blocks.

Contract (METHOD.md, "Components"):

* input ``x``: the LR image mapped to [-1, 1], shape ``(B, 3, h, w)`` with h, w even;
* input ``timesteps``: integer model-scale timesteps (the caller passes ``t - 1``), a scalar or shape ``(B,)``;
* output: a diffusers ``DiagonalGaussianDistribution`` over ``(B, latent_channels, h/2, w/2)`` (log-variance
  clamped to [-30, 20]), i.e. at the x4 HR latent resolution HR/8.

Every parameter lives under ``encoder.`` so the module's ``state_dict`` matches the official checkpoint
(``noise_predictor_sd_turbo_v5.pth``) key for key. Loading is strict and never unpickles arbitrary objects.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invsr_cli.base.errors import ModelLoadError, UnsafeCheckpointError

__all__ = [
    "NoisePredictorConfig",
    "NoisePredictor",
    "load_noise_predictor_state",
    "infer_noise_predictor_config",
    "load_noise_predictor",
    "check_noise_predictor_file",
]

_COMPONENT = "noise_predictor"
_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class NoisePredictorConfig:
    """Architecture sizes; the defaults are the official InvSR (SD-Turbo, v5) values (33.84 M parameters)."""

    in_channels: int = 3
    block_out_channels: tuple[int, ...] = (256, 512)
    layers_per_block: int = 3
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    latent_channels: int = 4
    temb_channels: int = 512
    eps: float = 1e-6
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    mid_block_add_attention: bool = True

    @property
    def timestep_input_dim(self) -> int:
        return max(128, self.block_out_channels[0])


class _TimeAwareEncoder(nn.Module):
    """conv_in -> AttnDownBlock2D x N (all but the last downsample) -> UNetMidBlock2D -> norm/SiLU/conv_out."""

    def __init__(self, cfg: NoisePredictorConfig) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block

        chans = cfg.block_out_channels
        self.time_proj = Timesteps(cfg.timestep_input_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
        self.time_embedding = TimestepEmbedding(cfg.timestep_input_dim, cfg.temb_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], kernel_size=3, stride=1, padding=1)

        self.down_blocks = nn.ModuleList()
        out_ch = chans[0]
        for i, ch in enumerate(chans):
            in_ch, out_ch = out_ch, ch
            self.down_blocks.append(
                get_down_block(
                    "AttnDownBlock2D",
                    num_layers=cfg.layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=cfg.temb_channels,
                    add_downsample=i < len(chans) - 1,
                    resnet_eps=cfg.eps,
                    resnet_act_fn="silu",
                    resnet_groups=cfg.norm_num_groups,
                    downsample_padding=0,
                    attention_head_dim=cfg.attention_head_dim,
                    resnet_time_scale_shift="default",
                )
            )
        self.mid_block = UNetMidBlock2D(
            in_channels=chans[-1],
            temb_channels=cfg.temb_channels,
            resnet_eps=cfg.eps,
            resnet_act_fn="silu",
            output_scale_factor=1,
            attention_head_dim=cfg.attention_head_dim,
            resnet_groups=cfg.norm_num_groups,
            add_attention=cfg.mid_block_add_attention,
            resnet_time_scale_shift="default",
        )
        self.conv_norm_out = nn.GroupNorm(num_channels=chans[-1], num_groups=cfg.norm_num_groups, eps=cfg.eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_proj(timesteps).to(dtype=self.time_embedding.linear_1.weight.dtype)
        emb = self.time_embedding(t_emb)
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h, emb)
        h = self.mid_block(h, emb)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class NoisePredictor(nn.Module):
    """The InvSR start-noise predictor. ``forward(x, timesteps)`` -> ``DiagonalGaussianDistribution``."""

    def __init__(self, config: NoisePredictorConfig | None = None) -> None:
        super().__init__()
        self.config = config or NoisePredictorConfig()
        self.encoder = _TimeAwareEncoder(self.config)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int):
        """``x``: (B,3,h,w) in [-1,1]; ``timesteps``: model-scale integer timesteps (t-1), scalar or (B,)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"noise predictor expects (B,{self.config.in_channels},h,w), got {tuple(x.shape)}"
            )
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t[None]
        t = t.to(torch.long).expand(x.shape[0]) if t.numel() == 1 else t.to(torch.long)
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must be a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}")
        return DiagonalGaussianDistribution(self.encoder(x, t))


# ----------------------------------------------------------------------------------------------------------
# checkpoint reading


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def load_noise_predictor_state(path: str | Path, component: str = _COMPONENT) -> dict[str, torch.Tensor]:
    """Read a noise-predictor checkpoint into a flat ``{key: tensor}`` dict, without executing any code.

    Accepts ``.pth``/``.pt``/``.ckpt``/``.bin`` (``torch.load(weights_only=True)``) and ``.safetensors``; strips
    ``module.``/``_orig_mod.`` prefixes and unwraps a nested ``state_dict``. Anything that is not a mapping of
    tensors raises :class:`UnsafeCheckpointError`; an unreadable file raises :class:`ModelLoadError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{component}: checkpoint {path} does not exist or is not a file")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{component}: cannot read safetensors file {path}: {exc}") from exc
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. Please|\n\n|$)", str(exc), re.S)
            reason = m.group(1).strip() if m else "not a plain state dict"
            raise UnsafeCheckpointError(
                f"{component}: {path} holds objects other than tensors (e.g. pickled code); refused without "
                f"executing anything: only plain state dicts of tensors are accepted ({reason})"
            ) from exc
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise ModelLoadError(f"{component}: cannot read checkpoint {path}: {exc}") from exc

    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise UnsafeCheckpointError(
            f"{component}: {path} does not hold a mapping of tensors (got {type(raw).__name__})"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UnsafeCheckpointError(
                f"{component}: {path} is not a mapping of tensors: entry {key!r} is a {type(value).__name__}"
            )
        new_key = _strip_prefixes(key)
        if new_key in state:
            raise ModelLoadError(
                f"{component}: {path} holds key {new_key!r} twice (with and without a prefix)"
            )
        state[new_key] = value
    return state


def infer_noise_predictor_config(state: Mapping[str, torch.Tensor]) -> NoisePredictorConfig:
    """Read the architecture sizes off a state dict's shapes (channels, blocks, layers); keep the official
    values for what shapes do not tell (attention head dim, norm groups, eps). Falls back to the defaults
    when the keys needed are absent (the strict load then names what is missing)."""
    default = NoisePredictorConfig()
    try:
        conv_in = state["encoder.conv_in.weight"]
        lin1 = state["encoder.time_embedding.linear_1.weight"]
        conv_out = state["encoder.conv_out.weight"]
    except KeyError:
        return default
    block_re = re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$")
    blocks: dict[int, dict[int, int]] = {}
    for key, value in state.items():
        m = block_re.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), {})[int(m.group(2))] = int(value.shape[0])
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        return default
    chans = tuple(blocks[i][0] for i in range(len(blocks)))
    layers = len(blocks[0])
    return NoisePredictorConfig(
        in_channels=int(conv_in.shape[1]),
        block_out_channels=chans,
        layers_per_block=layers,
        attention_head_dim=default.attention_head_dim,
        norm_num_groups=default.norm_num_groups,
        latent_channels=int(conv_out.shape[0]) // 2,
        temb_channels=int(lin1.shape[0]),
        eps=default.eps,
        mid_block_add_attention=any(k.startswith("encoder.mid_block.attentions.") for k in state),
    )


def _check_keys(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {', '.join(mismatched)}")
    if problems:
        raise ModelLoadError(
            f"{_COMPONENT}: checkpoint {path} does not match the noise predictor architecture "
            f"({model.config}); " + "; ".join(problems)
        )


def load_noise_predictor(
    path: str | Path,
    config: NoisePredictorConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> NoisePredictor:
    """Build the noise predictor and load ``path`` strictly (every key present, none extra, shapes equal).

    ``config=None`` infers the sizes from the checkpoint (official defaults for the rest), so the official
    file and the tiny test models go through the same code path.
    """
    path = Path(path)
    state = load_noise_predictor_state(path)
    # Built on the meta device (no random init: every weight comes from the file), then the checkpoint's tensors
    # are assigned in; the module has no buffers, so nothing is left uninitialised.
    model, _ = _meta_model_checked(path, state, config)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # pragma: no cover - guards a future diffusers block that adds buffers
        raise ModelLoadError(f"{_COMPONENT}: tensors not set from {path}: {', '.join(leftover)}")
    model.requires_grad_(False).eval()
    return model.to(device=device, dtype=dtype)


def check_noise_predictor_file(path: str | Path) -> tuple[NoisePredictorConfig, int]:
    """The strict key and shape check of :func:`load_noise_predictor` without building real weights: the state is
    read on the CPU, the architecture is built on the meta device. Returns the inferred config and the number of
    tensors; raises :class:`ModelLoadError` (or :class:`UnsafeCheckpointError`) like loading would."""
    path = Path(path)
    state = load_noise_predictor_state(path)
    _, cfg = _meta_model_checked(path, state, None)
    return cfg, len(state)


def _meta_model_checked(path: Path, state: dict[str, Any], config: NoisePredictorConfig | None
                        ) -> tuple[NoisePredictor, NoisePredictorConfig]:
    """The architecture for ``state`` (``config``, or inferred from its shapes) on the meta device, with the
    strict key and shape check done; no weight is allocated."""
    cfg = config or infer_noise_predictor_config(state)
    try:
        with torch.device("meta"):
            model = NoisePredictor(cfg)
    except (ValueError, ZeroDivisionError, RuntimeError) as exc:
        raise ModelLoadError(f"{_COMPONENT}: cannot build an architecture for {path} ({cfg}): {exc}") from exc
    _check_keys(model, state, path)
    return model, cfg


def config_as_dict(cfg: NoisePredictorConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (for manifests)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
