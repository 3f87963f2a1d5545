"""Optional colour fixes (METHOD.md, "Colour fix"): pull the output's colours towards the bicubic-upsampled LR.

All functions take ``output`` and ``reference`` as ``(B, 3, H, W)`` float tensors in [0, 1] of the same shape
(``reference`` = the bicubic x4 upsampling of the unpadded LR) and return a float32 tensor of that shape, clamped
to [0, 1], on ``output``'s device.

* ``wavelet``: high frequencies of the output + low frequencies of the reference (5-level a-trous decomposition
  with the 3x3 kernel [[1,2,1],[2,4,2],[1,2,1]]/16, dilation 2**i, replicate padding);
* ``ycbcr``: the output's luma Y with the reference's chroma Cb, Cr (BT.601 full range);
* ``adain``: the output's per-channel mean and standard deviation matched to the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from invsr_cli.base.errors import ConfigError, InputError
from invsr_cli.engine.schedules import COLOR_FIXES

__all__ = [
    "COLOR_FIXES",
    "wavelet_decompose",
    "wavelet_color_fix",
    "ycbcr_color_fix",
    "adain_color_fix",
    "apply_color_fix",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]

WAVELET_LEVELS = 5


def _check_pair(output: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if output.ndim != 4 or output.shape[1] != 3:
        raise InputError(f"colour fix expects output of shape (B,3,H,W), got {tuple(output.shape)}")
    if reference.shape != output.shape:
        raise InputError(
            f"colour fix reference must have the output's shape {tuple(output.shape)}, got {tuple(reference.shape)}"
        )
    return output.float(), reference.to(device=output.device, dtype=torch.float32)


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    k = (
        torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device)
        / 16.0
    )
    c = x.shape[1]
    weight = k.expand(c, 1, 3, 3)
    x = F.pad(x, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(x, weight, groups=c, dilation=dilation)


def wavelet_decompose(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(high, low)`` with ``high + low == x``: high = sum over levels of (image - blur), low = the final blur."""
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``output`` + low frequencies of ``reference``, clamped to [0, 1]."""
    output, reference = _check_pair(output, reference)
    high, _ = wavelet_decompose(output)
    _, low = wavelet_decompose(reference)
    return (high + low).clamp(0.0, 1.0)


# BT.601 full range (JPEG): Y in [0,1], Cb/Cr centred on 0.5.
_RGB2YCC = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_YCC2RGB = torch.tensor(
    [
        [1.0, 0.0, 1.402],
        [1.0, -0.344136, -0.714136],
        [1.0, 1.772, 0.0],
    ]
)
_YCC_OFFSET = torch.tensor([0.0, 0.5, 0.5])


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> YCbCr (BT.601 full range, Cb/Cr offset 0.5)."""
    m = _RGB2YCC.to(x.device, x.dtype)
    return torch.einsum("ij,bjhw->bihw", m, x) + _YCC_OFFSET.to(x.device, x.dtype)[None, :, None, None]


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    m = _YCC2RGB.to(x.device, x.dtype)
    return torch.einsum("ij,bjhw->bihw", m, x - _YCC_OFFSET.to(x.device, x.dtype)[None, :, None, None])


def ycbcr_color_fix(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Y of ``output`` with Cb and Cr of ``reference``, back to RGB, clamped to [0, 1]."""
    output, reference = _check_pair(output, reference)
    ycc = torch.cat([rgb_to_ycbcr(output)[:, :1], rgb_to_ycbcr(reference)[:, 1:]], dim=1)
    return ycbcr_to_rgb(ycc).clamp(0.0, 1.0)


def adain_color_fix(output: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel, shift and scale ``output`` to the mean and std of ``reference``; clamp to [0, 1]."""
    output, reference = _check_pair(output, reference)
    mu_o = output.mean(dim=(2, 3), keepdim=True)
    sd_o = output.std(dim=(2, 3), keepdim=True, unbiased=False)
    mu_r = reference.mean(dim=(2, 3), keepdim=True)
    sd_r = reference.std(dim=(2, 3), keepdim=True, unbiased=False)
    return ((output - mu_o) / (sd_o + eps) * sd_r + mu_r).clamp(0.0, 1.0)


_FIXES = {"wavelet": wavelet_color_fix, "ycbcr": ycbcr_color_fix, "adain": adain_color_fix}


def apply_color_fix(name: str | None, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Apply the colour fix ``name`` (``None``/``"none"``: just float32 and clamp)."""
    if name is None or name == "none":
        output, _ = _check_pair(output, reference)
        return output.clamp(0.0, 1.0)
    fix = _FIXES.get(name)
    if fix is None:
        raise ConfigError(f"`color_fix` must be one of none, {', '.join(COLOR_FIXES)}, got {name!r}")
    return fix(output, reference)
