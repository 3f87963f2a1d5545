"""The real SD-Turbo and InvSR weights on a shipped photo (opt-in: ``INVSR_REAL_WEIGHTS=1 make test-all``).

Skipped unless INVSR_REAL_WEIGHTS=1, and then skipped with the missing files named when the weights are not in the
Hugging Face cache (conftest.py looks them up in the cache; these tests never download: ``offline=True``).
The photo is ``tests/data/astronaut_face_128.png`` (public domain, see tests/data/README.md): one 128-px LR tile,
512x512 out. GPU when there is one, else CPU (fp32 there takes ~30-70 s per case).

The bounds below were set from arithmetic and the random-weight measurements in docs/PERFORMANCE.md, not
calibrated on the real weights (the session that wrote this had neither the weights nor a GPU); a first run with
the weights should record the measured values next to them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]

PHOTO = Path(__file__).parent / "data" / "astronaut_face_128.png"

# A working x4 of a clean photo stays close to the photo's bicubic x4 in the low frequencies (generative SR
# typically lands 25-30 dB from it). A uniform image in the photo's mean colour is 12.2 dB from this photo's
# bicubic x4; noise, a wrong latent scale or a colour shift fall to about that level. Required: at least
# BLANK_MARGIN_DB closer to the bicubic than that blank image is (i.e. >= 20.2 dB here).
BLANK_MARGIN_DB = 8.0

# Low precision against fp32 on the same input (posterior mean, 1 step). With random weights bf16's output
# differed from fp32's by 0.58/255 on average (docs/PERFORMANCE.md, "bf16 effect on the output"); fp16 has
# 3 more mantissa bits than bf16 (8x finer rounding). Required: PSNR against fp32 of at least this many dB, and
# a mean difference of at most this many 8-bit levels (3x and 2x the random-weight bf16 figure).
LOW_PRECISION_MIN_PSNR_DB = {"bf16": 30.0, "fp16": 35.0}
LOW_PRECISION_MAX_MEAN_LEVELS = {"bf16": 2.0, "fp16": 1.0}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _photo(device: torch.device) -> torch.Tensor:
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"), dtype=np.float32) / 255.0
    assert rgb.shape == (128, 128, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)


def _load(device: torch.device, dtype: str):
    from invsr_cli.engine.sampler import InvSREngine
    from invsr_cli.engine.weights import DEFAULT_NOISE_PREDICTOR, DEFAULT_SD_MODEL

    return InvSREngine.load(DEFAULT_SD_MODEL, DEFAULT_NOISE_PREDICTOR, device=device, dtype=dtype, offline=True)


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def fp32_engine(device):
    return _load(device, "fp32")


@pytest.mark.parametrize("steps", [1, 5])
def test_a_photo_upscales_close_to_its_bicubic(fp32_engine, device, steps):
    lr = _photo(device)
    out = fp32_engine.upscale(lr, steps=steps, seed=0)
    assert out.shape == (1, 3, 512, 512) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()), "NaN/inf in the fp32 output"
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    blank = bicubic.mean(dim=(2, 3), keepdim=True).expand_as(bicubic)
    to_bicubic, blank_to_bicubic = psnr(out, bicubic), psnr(blank, bicubic)
    assert to_bicubic >= blank_to_bicubic + BLANK_MARGIN_DB, (
        f"{steps} step(s): output {to_bicubic:.1f} dB from the bicubic x4, a blank image {blank_to_bicubic:.1f} dB")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_stays_close_to_fp32(fp32_engine, device, dtype):
    if dtype == "fp16" and device.type != "cuda":
        pytest.skip("fp16 is the GPU dtype (`--dtype auto` picks it on CUDA only); bf16 is the CPU's")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    lr = _photo(device)
    reference = fp32_engine.upscale(lr, steps=1, posterior="mean")
    low = _load(device, dtype).upscale(lr, steps=1, posterior="mean")
    assert bool(torch.isfinite(low).all()), f"NaN/inf in the {dtype} output"
    close = psnr(low, reference)
    mean_levels = float((low - reference).abs().mean()) * 255
    assert close >= LOW_PRECISION_MIN_PSNR_DB[dtype], f"{dtype}: {close:.1f} dB from fp32"
    assert mean_levels <= LOW_PRECISION_MAX_MEAN_LEVELS[dtype], f"{dtype}: mean |diff| {mean_levels:.2f} levels"
