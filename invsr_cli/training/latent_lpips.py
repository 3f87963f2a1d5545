"""The InvSR latent LPIPS (``vgg16_sdturbo_lpips.pth``): a VGG16 trunk on 4-channel SD latents, re-implemented.

Five feature maps (slices of the VGG16 "D" stack keeping torchvision's layer indices; only the max-pool in front of
slice 5 is kept), each unit-normalised over channels (eps 1e-10 added to the norm), squared difference, a 1x1
bias-free linear head, spatial mean; the five terms are summed -> ``(B, 1, 1, 1)``. Inputs are taken as given (scaled
latents in training). The released state dict stores the heads twice (``lin{k}`` and ``lins.{k}``): both spellings are
real keys here because the two names share one module, as in the checkpoint. No torchvision.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LatentLPIPS"]

# (slice, [(torchvision index, in, out)]) ; the slice-5 max-pool sits at index 23
_SLICES = (
    ((0, 4, 64), (2, 64, 64)),
    ((5, 64, 128), (7, 128, 128)),
    ((10, 128, 256), (12, 256, 256), (14, 256, 256)),
    ((17, 256, 512), (19, 512, 512), (21, 512, 512)),
    ((24, 512, 512), (26, 512, 512), (28, 512, 512)),
)
_POOL_INDEX = 23
CHANNELS = (64, 128, 256, 512, 512)


class _Trunk(nn.Module):
    def __init__(self, in_chans: int) -> None:
        super().__init__()
        for s, convs in enumerate(_SLICES, start=1):
            layers = nn.Sequential()
            if s == 5:
                layers.add_module(str(_POOL_INDEX), nn.MaxPool2d(2, 2))
            for idx, cin, cout in convs:
                layers.add_module(str(idx), nn.Conv2d(in_chans if idx == 0 else cin, cout, 3, padding=1))
                layers.add_module(str(idx + 1), nn.ReLU())
            setattr(self, f"slice{s}", layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in range(1, 6):
            x = getattr(self, f"slice{s}")(x)
            feats.append(x)
        return feats


class _Lin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels, 1, 1, bias=False))


class _Scaling(nn.Module):
    """Buffers of the image-space LPIPS kept for key compatibility; unused on latents."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LatentLPIPS(nn.Module):
    """``forward(in0, in1, per_layer=False, normalize=False)`` -> ``(B,1,1,1)`` (and the 5 terms if asked)."""

    def __init__(self, in_chans: int = 4) -> None:
        super().__init__()
        self.scaling_layer = _Scaling()
        self.net = _Trunk(in_chans)
        for k, c in enumerate(CHANNELS):
            setattr(self, f"lin{k}", _Lin(c))
        self.lins = nn.ModuleList([getattr(self, f"lin{k}") for k in range(len(CHANNELS))])
        self.eval()

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, per_layer: bool = False, normalize: bool = False):
        if normalize:
            in0, in1 = 2 * in0 - 1, 2 * in1 - 1
        terms = []
        for k, (f0, f1) in enumerate(zip(self.net(in0), self.net(in1), strict=True)):
            diff = (_unit(f0) - _unit(f1)) ** 2
            terms.append(self.lins[k].model(diff).mean(dim=(2, 3), keepdim=True))
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return (total, terms) if per_layer else total
