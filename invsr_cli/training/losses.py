"""The training losses of InvSR (TRAINING.md sections 6 and 7), per sample, in the scaled SD latent space."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["l2_latent", "gan_generator", "hinge_discriminator", "FAKE_CLAMP"]

FAKE_CLAMP = 10.0  # the generator's x0 is clamped to [-10, 10] before the discriminator sees it


def l2_latent(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over C,H,W of the squared difference -> (B,)."""
    return ((pred - target) ** 2).mean(dim=(1, 2, 3))


def gan_generator(logits: list[torch.Tensor]) -> torch.Tensor:
    """Per sample: the mean over the logit maps of ``-mean(logits)`` -> (B,)."""
    return torch.stack([-m.mean(dim=(1, 2, 3)) for m in logits]).mean(dim=0)


def hinge_discriminator(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Per sample: over the maps, mean of ``0.5*(relu(1-D(real)) + relu(1+D(fake)))`` over C,H,W -> (B,)."""
    terms = [
        (0.5 * (F.relu(1.0 - r) + F.relu(1.0 + f))).mean(dim=(1, 2, 3)) for r, f in zip(real, fake, strict=True)
    ]
    return torch.stack(terms).mean(dim=0)
