"""PSNR and SSIM on BT.601 Y against hand-computed cases (and scikit-image's SSIM where it is installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from invsr_cli.base.errors import InputError
from invsr_cli.quality.metrics import psnr_y, rgb_to_y, ssim_y


def _img(seed: int, h: int = 32, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_y_is_bt601_studio_luma() -> None:
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(px)[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553], atol=1e-12)


def test_psnr_identical_is_infinite_and_hand_case() -> None:
    a = _img(0)
    assert psnr_y(a, a) == math.inf
    # Grey images one level apart in R=G=B: Y differs by (65.481+128.553+24.966)/255 = 219/255 everywhere.
    g1, g2 = np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 101, np.uint8)
    expected = 10 * math.log10(255.0**2 / (219.0 / 255.0) ** 2)
    assert psnr_y(g1, g2) == pytest.approx(expected, abs=1e-9)
    # Half of the pixels off by 10 grey levels: MSE = 0.5 * (10*219/255)^2.
    b = g1.copy()
    b[:4] += 10
    assert psnr_y(b, g1) == pytest.approx(10 * math.log10(255.0**2 / (0.5 * (10 * 219 / 255) ** 2)), abs=1e-9)


def test_crop_border_leaves_the_edges_out() -> None:
    a = np.full((16, 16, 3), 50, np.uint8)
    b = a.copy()
    b[0, :] = 200
    assert psnr_y(a, b) < 40 and psnr_y(a, b, crop_border=1) == math.inf


def test_ssim_identical_is_one_and_constant_offset_by_hand() -> None:
    a = _img(1)
    assert ssim_y(a, a) == pytest.approx(1.0, abs=1e-12)
    # Two flat images: variances and covariance are 0, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    x, y = np.full((16, 16, 3), 60, np.uint8), np.full((16, 16, 3), 180, np.uint8)
    mx, my = 16 + 60 * 219 / 255, 16 + 180 * 219 / 255
    c1 = (0.01 * 255) ** 2
    assert ssim_y(x, y) == pytest.approx((2 * mx * my + c1) / (mx**2 + my**2 + c1), abs=1e-12)


def test_ssim_matches_scikit_image_gaussian_valid() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _img(2, 48, 48), _img(3, 48, 48)
    b = ((a.astype(int) * 3 + b) // 4).astype(np.uint8)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    _, full = metrics.structural_similarity(
        ya, yb, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    # scikit-image's Gaussian has 11 taps for sigma 1.5 (truncated at 3.5 sigma) and a full-size map; its valid
    # part (5 pixels in from each edge) is the same arithmetic as ours. Every value there is positive, so the
    # clamp of the contrast term (pyiqa's, not scikit-image's) does not act; float64 sums differ in order only.
    assert full[5:-5, 5:-5].min() > 0
    assert ssim_y(a, b) == pytest.approx(float(np.mean(full[5:-5, 5:-5])), abs=1e-12)


def test_bad_pairs_refused() -> None:
    with pytest.raises(InputError, match="sizes differ"):
        psnr_y(_img(0, 8, 8), _img(0, 8, 12))
    with pytest.raises(InputError, match="uint8"):
        psnr_y(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InputError, match="at least 11x11"):
        ssim_y(_img(0, 8, 8), _img(1, 8, 8))
