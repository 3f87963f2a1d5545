"""Full-reference metrics on the Y channel, with the conventions of the paper's tables (pyiqa's).

Pure numpy + OpenCV (no torch; LPIPS, which needs a network, is :mod:`invsr_cli.quality.lpips`).

API::

    psnr_y(out, ref, crop_border=0) -> float     # dB; math.inf for identical images
    ssim_y(out, ref, crop_border=0) -> float     # in [0, 1] (pyiqa clamps the contrast term at 0)
    rgb_to_y(rgb) -> float64 (H, W)              # BT.601 "studio" luma, 16..235

Conventions (those of pyiqa's ``psnr`` and ``ssim`` metrics with ``test_y_channel=True`` and
``color_space="ycbcr"``, which the InvSR authors score with; docs/EVALUATION.md states them for users):

* Both images are 8-bit RGB, as written to disk (an output is rounded to 8 bit before it is scored).
* Y is ITU-R BT.601 luma on the 0..255 scale: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with R, G, B in
  [0, 1]; not rounded. Computed in float64.
* PSNR: ``10 log10(255^2 / MSE)`` over all Y pixels. Identical images give ``inf`` (pyiqa adds ``eps = 1e-8``
  on the [0, 1] scale and reports about 80 dB there; we report what the formula says). A mean over images
  that holds an ``inf`` is ``inf``: the table says so rather than hiding it.
* SSIM: Wang et al. with an 11x11 Gaussian window of sigma 1.5 (normalised), "valid" filtering (no padding: the
  map is 10 pixels smaller on each axis), ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, the contrast-structure
  term clamped at 0 (pyiqa's ReLU), no downsampling, the mean of the map.
* ``crop_border``: pixels left out at each edge before scoring; 0 by default (pyiqa's default, and the authors'
  evaluation: the whole x4 output is compared, because InvSR has no border artefacts of its own to hide).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from invsr_cli.base.errors import InputError

__all__ = ["psnr_y", "rgb_to_y", "ssim_y"]

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], np.float64)
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (16..235, float64) of a uint8 ``(H, W, 3)`` RGB image."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError("metrics: images must be uint8 (H, W, 3) RGB arrays (outputs rounded to 8 bit)")
    return 16.0 + (rgb.astype(np.float64) / 255.0) @ _Y_WEIGHTS


def _pair(out: np.ndarray, ref: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    y_out, y_ref = rgb_to_y(out), rgb_to_y(ref)
    if y_out.shape != y_ref.shape:
        raise InputError(f"metrics: sizes differ: {out.shape[1]}x{out.shape[0]} vs {ref.shape[1]}x{ref.shape[0]}")
    if crop_border < 0:
        raise InputError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        y_out = y_out[crop_border:-crop_border, crop_border:-crop_border]
        y_ref = y_ref[crop_border:-crop_border, crop_border:-crop_border]
    if y_out.size == 0:
        raise InputError("metrics: nothing left to score after the crop border")
    return y_out, y_ref


def psnr_y(out: np.ndarray, ref: np.ndarray, crop_border: int = 0) -> float:
    """PSNR in dB between two uint8 RGB images on BT.601 Y; ``math.inf`` when they are identical there."""
    y_out, y_ref = _pair(out, ref, crop_border)
    mse = float(np.mean((y_out - y_ref) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def _window() -> np.ndarray:
    g = cv2.getGaussianKernel(_SSIM_WINDOW, _SSIM_SIGMA, cv2.CV_64F)
    w = g @ g.T
    return w / w.sum()


def _valid(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    r = _SSIM_WINDOW // 2
    full = cv2.filter2D(img, cv2.CV_64F, win, borderType=cv2.BORDER_CONSTANT)
    return full[r:-r, r:-r]


def ssim_y(out: np.ndarray, ref: np.ndarray, crop_border: int = 0) -> float:
    """SSIM between two uint8 RGB images on BT.601 Y (see the module docstring for the conventions).

    Both images must be at least 11x11 after the crop border (the window)."""
    x, y = _pair(out, ref, crop_border)
    if min(x.shape) < _SSIM_WINDOW:
        raise InputError(f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels, got {x.shape[1]}x{x.shape[0]}")
    win = _window()
    mu_x, mu_y = _valid(x, win), _valid(y, win)
    var_x = _valid(x * x, win) - mu_x**2
    var_y = _valid(y * y, win) - mu_y**2
    cov = _valid(x * y, win) - mu_x * mu_y
    cs = np.maximum((2 * cov + _C2) / (var_x + var_y + _C2), 0.0)
    luminance = (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1)
    return float(np.mean(luminance * cs))
