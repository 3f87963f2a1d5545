"""Colour fixes on synthetic images (METHOD.md, "Colour fix")."""

from __future__ import annotations

import pytest
import torch

from invsr_cli.base.errors import ConfigError, InputError
from invsr_cli.engine.colorfix import (
    adain_color_fix,
    apply_color_fix,
    rgb_to_ycbcr,
    wavelet_color_fix,
    wavelet_decompose,
    ycbcr_color_fix,
    ycbcr_to_rgb,
)

H = W = 96


def _gradient(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> torch.Tensor:
    """(1,3,H,W) smooth diagonal ramp from colour lo to colour hi."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    ramp = ((xx + yy) / 2)[None, None]
    lo_t = torch.tensor(lo)[None, :, None, None]
    hi_t = torch.tensor(hi)[None, :, None, None]
    return lo_t + (hi_t - lo_t) * ramp


def _checker(amplitude: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return (amplitude * (((xx + yy) % 2) * 2 - 1).float())[None, None].expand(1, 3, H, W)


@pytest.fixture()
def pair():
    reference = _gradient((0.30, 0.40, 0.50), (0.60, 0.55, 0.70))  # smooth, the LR's colours
    smooth_other = _gradient((0.55, 0.30, 0.35), (0.45, 0.60, 0.40))  # wrong colours ...
    output = smooth_other + _checker(0.1)  # ... plus fine detail
    return output, reference, smooth_other


def test_decomposition_sums_back():
    x = torch.rand(2, 3, 40, 56)
    high, low = wavelet_decompose(x)
    torch.testing.assert_close(high + low, x, atol=1e-6, rtol=0)


def test_wavelet_keeps_output_high_and_reference_low(pair):
    output, reference, smooth_other = pair
    result = wavelet_color_fix(output, reference)
    assert result.shape == output.shape and result.dtype == torch.float32

    res_high, res_low = wavelet_decompose(result)
    out_high, out_low = wavelet_decompose(output)
    ref_high, ref_low = wavelet_decompose(reference)
    inner = (
        slice(None),
        slice(None),
        slice(16, -16),
        slice(16, -16),
    )  # away from the replicate-padded border

    # low band: the reference's, not the output's
    assert (res_low - ref_low)[inner].abs().max() < 0.01
    assert (out_low - ref_low)[
        inner
    ].abs().max() > 0.1  # the test can fail: the output's colours were far off
    # high band: the output's checker detail survives
    assert (res_high - out_high)[inner].abs().max() < 0.01
    assert out_high[inner].abs().mean() > 0.05
    # and the whole image is "reference colours + output detail"
    assert (result - (reference + _checker(0.1)))[inner].abs().max() < 0.01
    assert (result - smooth_other)[inner].abs().mean() > 0.05


def test_wavelet_clamps_to_unit_range():
    out = torch.ones(1, 3, 32, 32) * 0.95 + _checker(0.2)[..., :32, :32]
    ref = torch.full((1, 3, 32, 32), 0.95)
    result = wavelet_color_fix(out, ref)
    assert float(result.max()) <= 1.0 and float(result.min()) >= 0.0


def test_ycbcr_known_values_and_roundtrip():
    white = torch.ones(1, 3, 1, 1)
    torch.testing.assert_close(
        rgb_to_ycbcr(white).flatten(), torch.tensor([1.0, 0.5, 0.5]), atol=1e-5, rtol=0
    )
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        rgb_to_ycbcr(red).flatten(), torch.tensor([0.299, 0.331264, 1.0]), atol=1e-5, rtol=0
    )
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-5, rtol=0)


def test_ycbcr_keeps_output_luma_and_reference_chroma():
    g = torch.Generator().manual_seed(0)
    output = 0.3 + 0.4 * torch.rand(2, 3, 24, 24, generator=g)
    reference = 0.35 + 0.3 * torch.rand(2, 3, 24, 24, generator=g)
    result = ycbcr_color_fix(output, reference)
    ycc_res, ycc_out, ycc_ref = rgb_to_ycbcr(result), rgb_to_ycbcr(output), rgb_to_ycbcr(reference)
    assert float(result.min()) > 0 and float(result.max()) < 1  # nothing clipped, so equalities are exact
    torch.testing.assert_close(ycc_res[:, :1], ycc_out[:, :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(ycc_res[:, 1:], ycc_ref[:, 1:], atol=1e-5, rtol=0)
    assert (ycc_out[:, 1:] - ycc_ref[:, 1:]).abs().max() > 0.05


def test_adain_matches_reference_mean_and_std():
    g = torch.Generator().manual_seed(1)
    output = 0.4 + 0.2 * torch.rand(2, 3, 32, 32, generator=g)  # uniform: adain maps it onto the reference's
    reference = torch.stack(
        [0.2 + 0.2 * torch.rand(3, 32, 32, generator=g), 0.5 + 0.3 * torch.rand(3, 32, 32, generator=g)]
    )
    result = adain_color_fix(output, reference)
    assert float(result.min()) > 0 and float(result.max()) < 1
    torch.testing.assert_close(result.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        result.std(dim=(2, 3), unbiased=False), reference.std(dim=(2, 3), unbiased=False), atol=1e-3, rtol=0
    )
    # the structure (per-channel correlation with the output) is the output's
    c = torch.corrcoef(torch.stack([result[0, 0].flatten(), output[0, 0].flatten()]))[0, 1]
    assert float(c) > 0.999


def test_apply_color_fix_dispatch_and_errors(pair):
    output, reference, _ = pair
    torch.testing.assert_close(
        apply_color_fix("wavelet", output, reference), wavelet_color_fix(output, reference)
    )
    torch.testing.assert_close(
        apply_color_fix("ycbcr", output, reference), ycbcr_color_fix(output, reference)
    )
    torch.testing.assert_close(
        apply_color_fix("adain", output, reference), adain_color_fix(output, reference)
    )
    torch.testing.assert_close(apply_color_fix(None, output, reference), output.clamp(0, 1))
    with pytest.raises(ConfigError, match="color_fix.*got 'sepia'"):
        apply_color_fix("sepia", output, reference)
    with pytest.raises(InputError, match="shape"):
        apply_color_fix("wavelet", output, reference[..., :-1])
    with pytest.raises(InputError, match=r"\(B,3,H,W\)"):
        wavelet_color_fix(output[:, :2], reference[:, :2])
