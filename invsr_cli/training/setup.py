"""Assembling a :class:`~invsr_cli.training.step.Trainer` from loaded components (the prompt embedding computed
once, then the text encoder freed) and the tiny training networks tests build."""

from __future__ import annotations

from typing import Any

import torch

from invsr_cli.engine.sampler import POSITIVE_PROMPT, alphas_cumprod_from_config
from invsr_cli.training.discriminator import DiscriminatorConfig, LatentDiscriminator
from invsr_cli.training.step import LossWeights, Optim, Trainer

__all__ = ["encode_prompt", "place_frozen", "trainer_from_components", "tiny_discriminator_config"]


@torch.no_grad()
def encode_prompt(tokenizer: Any, text_encoder: Any, text: str = POSITIVE_PROMPT) -> torch.Tensor:
    """(1, 77, D) last hidden state of the text encoder for ``text`` (the authors' fixed positive prompt)."""
    max_len = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    ids = tokenizer(text, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device)).last_hidden_state.float()


def place_frozen(components: Any, dtype: torch.dtype, device: torch.device | str) -> None:
    """The frozen UNet and VAE onto ``device`` in ``dtype``: the autocast dtype, as the authors train with fp16
    weights for them (they are never updated, so they need no float32 master copy). The text encoder stays where it
    is (one prompt on the CPU, then freed); the trained networks keep float32 (:func:`trainer_from_components`)."""
    for m in (components.unet, components.vae):
        # nn.Module.to: diffusers' own .to() notes its fp32-only modules, which these models do not have
        torch.nn.Module.to(m, device=device, dtype=dtype)


def tiny_discriminator_config(cross_attention_dim: int = 32) -> DiscriminatorConfig:
    """A small discriminator with the released layout (3 levels, attention in the lower two)."""
    return DiscriminatorConfig(block_out_channels=(16, 32, 32), attention_heads=(1, 2, 2), norm_num_groups=8,
                               cross_attention_dim=cross_attention_dim, pool_heads=4)


def trainer_from_components(
    components: Any,
    *,
    lpips: torch.nn.Module | None,
    discriminator: torch.nn.Module | None,
    weights: LossWeights = LossWeights(),
    optim: Optim = Optim(),
    seed: int = 123456,
    autocast_dtype: torch.dtype | None = None,
    grad_checkpointing: bool = False,
    free_text_encoder: bool = True,
) -> Trainer:
    prompt = encode_prompt(components.tokenizer, components.text_encoder)
    if free_text_encoder:
        components.text_encoder = None
    dev = next(components.unet.parameters()).device
    return Trainer(
        vae=components.vae,
        unet=components.unet,
        noise_predictor=components.noise_predictor.float().to(dev),
        prompt_embeds=prompt,
        alphas_cumprod=alphas_cumprod_from_config(components.scheduler.config),
        lpips=lpips.to(dev) if lpips is not None else None,
        discriminator=discriminator.to(dev) if discriminator is not None else None,
        weights=weights,
        optim=optim,
        seed=seed,
        autocast_dtype=autocast_dtype,
        grad_checkpointing=grad_checkpointing,
    )


def random_discriminator(config: DiscriminatorConfig, seed: int = 0) -> LatentDiscriminator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LatentDiscriminator(config)
