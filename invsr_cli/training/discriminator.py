"""The InvSR latent discriminator, re-implemented on stock diffusers blocks from the published facts.

It is a conditional UNet on 4-channel SD latents (``discriminator_sd_turbo_v5.pth``: 519 keys, 112,082,532
parameters) with two twists: a second stem ``feature_in`` whose output, bicubically resized, is concatenated in front
of every down block, and four logit heads (after the mid block and after each up block) instead of ``conv_out``.
The time embedding is the sinusoidal one plus a text-pooled embedding (``addition_embed_type: text``).
``forward`` returns a list of four ``(B, 1, h, w)`` logit maps. Training facts: TRAINING.md section 7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiscriminatorConfig", "LatentDiscriminator"]


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture sizes; the defaults are the released SD-Turbo v5 discriminator's."""

    in_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: tuple[int, ...] = (1, 2, 2)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    # used as the number of heads per block (the diffusers naming quirk the released config relies on)
    attention_heads: tuple[int, ...] = (8, 16, 16)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    pool_heads: int = 64


def _head(channels: int, groups: int, eps: float) -> nn.Sequential:
    g = min(groups, channels // 4)
    return nn.Sequential(
        nn.GroupNorm(g, channels, eps=eps),
        nn.SiLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.GroupNorm(g, channels, eps=eps),
        nn.SiLU(),
        nn.Conv2d(channels, 1, 3, padding=1),
    )


class LatentDiscriminator(nn.Module):
    """``forward(sample, timestep, encoder_hidden_states)`` -> list of 4 logit maps (mid, up0, up1, up2)."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        from diffusers.models.embeddings import TextTimeEmbedding, TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import (
            UNetMidBlock2DCrossAttn,
            get_down_block,
            get_up_block,
        )

        cfg = self.config = config or DiscriminatorConfig()
        chans, groups, eps = cfg.block_out_channels, cfg.norm_num_groups, cfg.norm_eps
        temb = 4 * chans[0]
        xdim = cfg.cross_attention_dim
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.feature_in = nn.Conv2d(cfg.in_channels, groups, 3, padding=1)
        self.time_proj = Timesteps(chans[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        self.add_embedding = TextTimeEmbedding(xdim, temb, num_heads=cfg.pool_heads)

        self.down_blocks = nn.ModuleList()
        out_ch = chans[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, chans[i]
            self.down_blocks.append(
                get_down_block(
                    kind,
                    num_layers=cfg.layers_per_block[i],
                    in_channels=in_ch + groups,
                    out_channels=out_ch,
                    temb_channels=temb,
                    add_downsample=i < len(chans) - 1,
                    resnet_eps=eps,
                    resnet_act_fn="silu",
                    resnet_groups=groups,
                    cross_attention_dim=xdim,
                    num_attention_heads=cfg.attention_heads[i],
                    downsample_padding=1,
                    attention_head_dim=out_ch // cfg.attention_heads[i],
                )
            )
        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=chans[-1],
            temb_channels=temb,
            resnet_eps=eps,
            resnet_act_fn="silu",
            output_scale_factor=1,
            cross_attention_dim=xdim,
            num_attention_heads=cfg.attention_heads[-1],
            resnet_groups=groups,
        )
        rev = list(reversed(chans))
        rev_heads = list(reversed(cfg.attention_heads))
        rev_layers = list(reversed(cfg.layers_per_block))
        self.up_blocks = nn.ModuleList()
        out_ch = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, len(chans) - 1)]
            self.up_blocks.append(
                get_up_block(
                    kind,
                    num_layers=rev_layers[i] + 1,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    prev_output_channel=prev,
                    temb_channels=temb,
                    add_upsample=i < len(chans) - 1,
                    resnet_eps=eps,
                    resnet_act_fn="silu",
                    resolution_idx=i,
                    resnet_groups=groups,
                    cross_attention_dim=xdim,
                    num_attention_heads=rev_heads[i],
                    attention_head_dim=out_ch // rev_heads[i],
                )
            )
        self.out_blocks = nn.ModuleList(
            [_head(chans[-1], groups, eps)] + [_head(c, groups, eps) for c in rev]
        )

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, encoder_hidden_states: torch.Tensor
    ) -> list[torch.Tensor]:
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        emb = emb + self.add_embedding(encoder_hidden_states)

        h = self.conv_in(sample)
        side = self.feature_in(sample)
        skips: list[torch.Tensor] = [h]
        for block in self.down_blocks:
            h = torch.cat([h, F.interpolate(side, size=h.shape[-2:], mode="bicubic", align_corners=False)], 1)
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h, res = block(hidden_states=h, temb=emb)
            skips.extend(res)
        h = self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        logits = [self.out_blocks[0](h)]
        for i, block in enumerate(self.up_blocks):
            res = tuple(skips[-len(block.resnets) :])
            del skips[-len(block.resnets) :]
            size = skips[-1].shape[2:] if skips and i < len(self.up_blocks) - 1 else None
            if getattr(block, "has_cross_attention", False):
                h = block(
                    hidden_states=h,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=encoder_hidden_states,
                    upsample_size=size,
                )
            else:
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
            logits.append(self.out_blocks[i + 1](h))
        return logits
