"""Degradation analyser: what the ``auto`` preset measures (its decision rule is ``invsr_cli.settings.auto_rules``).

Pure numpy + OpenCV: no torch, no model, no file I/O. It measures the LOW-RESOLUTION image that is about to
be upscaled and says which shipped preset suits it. docs/AUTO_PRESET.md explains the estimates, their units,
the thresholds and how to tune them.

API: ``analyse_image(rgb) -> Degradation`` (``rgb``: HxWx3 float32/float64 in [0, 1], or uint8 / uint16). The rules
that turn a :class:`Degradation` into a preset are :mod:`invsr_cli.settings.auto_rules`'s
(``load_default_auto_rules``, ``parse_auto_rules``, ``choose``, ``choose_preset``)::

    from invsr_cli.settings.auto_rules import choose, load_default_auto_rules

    deg = analyse_image(rgb)
    choice = choose(deg, load_default_auto_rules())
    log(f"{path}: {choice.preset} ({choice.reason})", deg.as_dict())

Estimates (:class:`Degradation`), all measured on the image as given (no resizing here; ``invsr upscale`` and
``invsr analyse`` give it the image as read, after any ``--max-input-side`` reduction):

* ``noise_sigma`` -- standard deviation of additive white noise per colour channel, in 8-bit levels (0..255
  scale; the mean over R, G, B). Immerkaer's 3x3 noise operator; per 8x8 block a robust median of its
  absolute response; the 10th percentile over blocks (the flattest parts of the image, so edges and texture
  barely count); a gain that makes pure Gaussian noise read its true sigma. Blocks touching clipped pixels
  (0 or 255) are skipped, since clipped noise reads low; where fewer than 32 blocks are free of clipping (a
  dark sky under strong noise) a clip-tolerant estimator takes over. Clean photos read 0.3-6 (fine texture
  reads as a little noise), Gaussian noise of sigma 10/20/30 reads 9.9-12.6/19.7-27.4/29.2-37.8.
* ``blur`` -- Gaussian-sigma equivalent of the blur, in input (low-resolution) pixels, relative to a sharp
  photograph reduced by pixel-area averaging: 0 means as sharp as such a photo (sharper clamps to 0), and a
  photo blurred with a Gaussian of sigma ``s`` before a 4x area reduction reads about ``s / 4``. Measured
  from ``log2(E1 / E0)``, the ratio of the energies of the two finest difference-of-Gaussian bands (blur
  drains the finest band first), after subtracting what the measured noise contributes to each band, and
  converted to pixels with a calibration table; where that fine measure saturates (above 1.25 px) or noise
  drowns the finest band, a coarser band pair takes over (within about +-0.3 px below 1 px, reads up
  to 4 px). ``NaN`` when there is no detail above the noise to measure it on (a flat image, or strong noise
  on a low-contrast one): no rule matches NaN, and :meth:`Degradation.as_dict` turns it into ``None``.
* ``blockiness`` -- JPEG blocking: the luma step across 8x8 block boundaries divided by the mean of the two
  steps beside it (inside the blocks), each boundary weighted by 1 / (mean of those three steps + 4 levels)
  so flat areas, where blocking shows, count most. 1.0 means no blocking (unblocked photos read 0.84-1.06);
  JPEG quality 40 reads 1.18-3.4, quality 15 reads 1.5-7.5. The grid is assumed at phase 0: images arrive
  as decoded, with block boundaries after every 8th row and column.

Bounded view: an image of at most 262 144 pixels (512x512) is analysed whole. A larger one is analysed on up
to 16 crops of 128x128 pixels on a regular grid spread over the whole image, their origins on multiples of 8
so the JPEG grid phase is kept; only the crops are converted to float. Crops, not a downscale: a downscale
would average the noise away, make blurry images look sharp and erase the 8x8 grid, which are exactly what
is measured. The cost is therefore bounded whatever the image size (about 17 ms for 4000x3000 on 2 cores).

Decision rule (data, not code; :mod:`invsr_cli.settings.auto_rules`): ``presets/auto.yaml`` holds an ordered list of
rules; the first rule whose every bound holds names the preset, otherwise the fallback does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from invsr_cli.base.errors import InputError

__all__ = ["METRICS", "Degradation", "analyse_image"]

#: The measured quantities a rule may test, in the order they are reported.
METRICS: tuple[str, ...] = ("noise_sigma", "blur", "blockiness")


@dataclass(frozen=True)
class Degradation:
    """What :func:`analyse_image` measured on one low-resolution image.

    Attributes:
        noise_sigma: std of additive white noise per channel, in 8-bit levels (0..255 scale).
        blur: Gaussian-sigma equivalent of the blur, in input pixels (0 = as sharp as an area-reduced photo);
            NaN when the image has no detail above its noise to measure it on.
        blockiness: JPEG 8x8 boundary step / within-block step (1.0 = no blocking).
    """

    noise_sigma: float
    blur: float
    blockiness: float

    def as_dict(self) -> dict[str, float | None]:
        """The estimates rounded for logs and JSON (2 decimals for noise, 3 for blur and blockiness); an
        estimate that could not be made (NaN) becomes ``None`` (JSON ``null``)."""

        def rnd(value: float, digits: int) -> float | None:
            return None if math.isnan(value) else round(value, digits)

        return {
            "noise_sigma": rnd(self.noise_sigma, 2),
            "blur": rnd(self.blur, 3),
            "blockiness": rnd(self.blockiness, 3),
        }


# --------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------

_WHOLE_MAX_PIXELS = 512 * 512  # analysed whole up to this many pixels
_CROP = 128  # side of one crop of the bounded view (a multiple of 8)
_MAX_CROPS = 16  # 16 x 128 x 128 = 262 144 pixels, the same budget
_MIN_SIDE = 16  # smaller images are not measured (neutral estimates)

# Noise: Immerkaer's operator; its response to white noise of std s has std 6 s.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_NOISE_BLOCK = 8
_NOISE_PERCENTILE = 10.0
_CLIP_LOW, _CLIP_HIGH = 0.5, 254.5  # pixels outside are clipped (clipped noise reads low)
_MIN_FREE_BLOCKS = 32  # fewer blocks free of clipped pixels: the clip-tolerant estimator is used

# Blur: Gaussian pyramid of sigmas; band i = G(s[i-1]) - G(s[i]) with G(0) the image itself.
_BAND_SIGMAS = (0.5, 0.75, 1.125, 1.6875)
_BAND_MARGIN = 8  # pixels at crop borders left out of the band energies
# Variance of the luma quantisation noise of 8-bit RGB: (sum of squared luma weights) / 12.
_QUANT_VAR = 0.45 / 12.0
_MIN_BAND_ENERGY = 1e-4  # floor of a band energy after noise subtraction (8-bit levels squared)

# Blockiness
_BLOCK_ACTIVITY_OFFSET = 4.0  # 8-bit levels; weight = 1 / (local mean step + this)

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# Calibration tables (docs/AUTO_PRESET.md, "Calibration"): the median fine and coarse band measures of the
# tuning photos (astronaut, coffee, rocket, camera, motorcycle, coins; full frames and four 3/4 crops each)
# blurred with a Gaussian of sigma 4*s at full resolution, then reduced 4x by area averaging, against s.
# The fine measure is monotonic and tight up to s = 1.25 px; the coarse one reads up to about 4 px but varies
# more with the content below 1 px (it is used there only when noise drowns the finest band).
_SIGMAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
_FINE_TABLE = (_SIGMAS[:10], (0.200, 0.242, 0.363, 0.508, 0.650, 0.787, 0.905, 0.991, 1.057, 1.146))
_COARSE_TABLE = (_SIGMAS, (0.544, 0.564, 0.629, 0.717, 0.829, 0.946, 1.068, 1.185, 1.292, 1.477, 1.615, 1.819, 1.964, 2.051, 2.151))  # fmt: skip
_COARSE_FROM = 1.25  # the coarse measure is used only where the fine one saturates (input pixels) ...
_MIN_SNR = 1.0  # ... or where noise holds more energy than the image in the finest band
_NOISE_GAIN = 1.284  # makes pure Gaussian noise read its sigma (the 10th percentile over blocks reads low)
_NOISE_GAIN_CLIPPED = 1.365  # the same for the clip-tolerant estimator


def _to_float255(crop: np.ndarray) -> np.ndarray:
    """A crop as float32 in 0..255 (uint8 as is, uint16 / 257, float * 255), 3 channels."""
    if crop.dtype == np.uint8:
        out = crop.astype(np.float32)
    elif crop.dtype == np.uint16:
        out = crop.astype(np.float32) * np.float32(1.0 / 257.0)
    else:
        out = crop.astype(np.float32) * np.float32(255.0)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])


def _check_image(rgb: object) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise InputError(f"analyse_image expects a numpy array, got {type(rgb).__name__}")
    arr = rgb[:, :, None] if rgb.ndim == 2 else rgb
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(
            f"analyse_image expects an HxWx3 image (HxW, HxWx1, HxWx4 accepted), got shape {rgb.shape}"
        )
    if arr.dtype not in (np.uint8, np.uint16, np.float32, np.float64, np.float16):
        raise InputError(f"analyse_image expects uint8, uint16 or float pixels, got {arr.dtype}")
    return arr


def _crop_origins(length: int, side: int, count: int) -> list[int]:
    """``count`` crop origins of ``side`` pixels spread evenly over ``length``, on multiples of 8."""
    if count <= 1:
        return [((length - side) // 2) // 8 * 8]
    span = length - side
    return sorted({round(span * i / (count - 1)) // 8 * 8 for i in range(count)})


def _view(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """The bounded view: crops (y, x, h, w) that are analysed."""
    if height * width <= _WHOLE_MAX_PIXELS:
        return [(0, 0, height, width)]
    ch, cw = min(_CROP, height), min(_CROP, width)
    ny_max, nx_max = max(1, height // ch), max(1, width // cw)
    ny = min(ny_max, max(1, round(math.sqrt(_MAX_CROPS * height / width))))
    nx = min(nx_max, max(1, _MAX_CROPS // ny))
    ny = min(ny_max, max(1, _MAX_CROPS // nx))
    return [(y, x, ch, cw) for y in _crop_origins(height, ch, ny) for x in _crop_origins(width, cw, nx)]


def _blocks(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """The top-left ``h`` x ``w`` of ``a`` as rows of 8x8 blocks, shape ``(h * w / 64, 64)``."""
    b = _NOISE_BLOCK
    return a[:h, :w].reshape(h // b, b, w // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b)


def _block_noise(channel: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    """Noise std of each 8x8 block free of clipped pixels: median |Immerkaer response| / (0.6745 * 6)."""
    resp = cv2.filter2D(channel, cv2.CV_32F, _IMMERKAER)[1:-1, 1:-1]
    h, w = resp.shape[0] // _NOISE_BLOCK * _NOISE_BLOCK, resp.shape[1] // _NOISE_BLOCK * _NOISE_BLOCK
    if h == 0 or w == 0:
        return np.empty(0, np.float32)
    touched = cv2.dilate(clipped.view(np.uint8), np.ones((3, 3), np.uint8))[1 : h + 1, 1 : w + 1]
    free = _blocks(np.abs(resp), h, w)[~_blocks(touched, h, w).any(axis=1)]
    k = free.shape[1] // 2
    return np.partition(free, k, axis=1)[:, k] * np.float32(1.0 / (0.6745 * 6.0))  # cheaper than np.median


def _block_noise_clipped(channel: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    """Noise std of each 8x8 block less than 40% clipped, for images with too few unclipped blocks (a dark
    sky under strong noise): the spread of the residual from a 5x5 local mean on the block's unclipped side
    (84th - 50th percentile when clipped at 0, 50th - 16th when clipped at 255); clipping leaves that side
    intact. More sensitive to texture than :func:`_block_noise`, so it is only the fallback."""
    h, w = channel.shape[0] // _NOISE_BLOCK * _NOISE_BLOCK, channel.shape[1] // _NOISE_BLOCK * _NOISE_BLOCK
    if h == 0 or w == 0:
        return np.empty(0, np.float32)
    resid = _blocks(channel - cv2.blur(channel, (5, 5), borderType=cv2.BORDER_REFLECT), h, w)
    low = _blocks(clipped & (channel <= _CLIP_LOW), h, w).mean(axis=1)
    high = _blocks(clipped & (channel >= _CLIP_HIGH), h, w).mean(axis=1)
    ok = (low < 0.4) & (high < 0.4)
    q16, q50, q84 = np.percentile(resid[ok], (16, 50, 84), axis=1)
    return np.where(low[ok] >= high[ok], q84 - q50, q50 - q16).astype(np.float32)


def _band_filters_gain() -> np.ndarray:
    """Squared L2 norm of each band filter: band energy that white noise of unit variance contributes."""
    imp = np.zeros((41, 41), np.float32)
    imp[20, 20] = 1.0
    levels = [imp] + [cv2.GaussianBlur(imp, (0, 0), s) for s in _BAND_SIGMAS]
    return np.array([float(((levels[i] - levels[i + 1]) ** 2).sum()) for i in range(len(_BAND_SIGMAS))])


_BAND_GAIN = _band_filters_gain()


def _band_energies(luma: np.ndarray) -> tuple[np.ndarray, int]:
    """Sums of squared band responses over the crop's interior, and the number of pixels summed."""
    levels = [luma] + [cv2.GaussianBlur(luma, (0, 0), s, borderType=cv2.BORDER_REFLECT) for s in _BAND_SIGMAS]
    m = min(_BAND_MARGIN, max(0, (min(luma.shape) - 8) // 2))
    inner = (slice(m, luma.shape[0] - m), slice(m, luma.shape[1] - m))
    sums = np.array(
        [float(np.square(levels[i][inner] - levels[i + 1][inner]).sum()) for i in range(len(_BAND_SIGMAS))]
    )
    n = (luma.shape[0] - 2 * m) * (luma.shape[1] - 2 * m)
    return sums, n


def _blockiness_sums(luma: np.ndarray) -> tuple[float, float]:
    """Weighted steps across block boundaries and weighted steps next to them, over both axes.

    For each boundary (between pixels 8k+7 and 8k+8 of a row or column) the step across it is compared with
    the mean of the two steps beside it (inside the two blocks); each boundary is weighted by
    1 / (mean of those three steps + 4 levels), so flat areas, where blocking shows, count most. Comparing
    with the neighbouring steps, not with all steps inside the block, keeps smooth periodic content (a row
    of coins, a fence) from looking blocky.
    """
    num = den = 0.0
    for a in (luma, luma.T):
        d = np.abs(np.diff(a, axis=1))  # d[:, j]: step between columns j and j+1; a boundary when j % 8 == 7
        n = (d.shape[1] - 1) // 8 * 8
        if n == 0:
            continue
        before, across, after = d[:, 6:n:8], d[:, 7:n:8], d[:, 8 : n + 1 : 8]
        inside = 0.5 * (before + after)
        w = 1.0 / ((before + across + after) * (1.0 / 3.0) + _BLOCK_ACTIVITY_OFFSET)
        num += float((w * across).sum())
        den += float((w * inside).sum())
    return num, den


@dataclass(frozen=True)
class _Raw:
    """Uncalibrated measurements (used by the calibration in the tests and docs)."""

    noise_sigma: float  # calibrated per-channel noise (8-bit levels)
    luma_noise: float  # calibrated luma noise (8-bit levels)
    fine: float  # fine band measure r0 = log2(E1 / E0)
    coarse: float  # coarse band measure r2 = log2(E3 / E2)
    fine_snr: float  # band 0: energy of the image / energy of the measured noise
    coarse_snr: float  # band 2: the same
    blockiness: float


def _measure(rgb: np.ndarray) -> _Raw | None:
    arr = _check_image(rgb)
    height, width = arr.shape[:2]
    if min(height, width) < _MIN_SIDE:
        return None
    planes: list[list[tuple[np.ndarray, np.ndarray]]] = [[], [], [], []]  # R, G, B, luma: (plane, clipped)
    bnum = bden = 0.0
    for y, x, h, w in _view(height, width):
        crop = _to_float255(arr[y : y + h, x : x + w])
        if not np.isfinite(crop).all():
            raise InputError("analyse_image: the image holds NaN or infinite values")
        clipped = (crop <= _CLIP_LOW) | (crop >= _CLIP_HIGH)
        for c in range(3):
            planes[c].append((np.ascontiguousarray(crop[:, :, c]), np.ascontiguousarray(clipped[:, :, c])))
        luma = np.ascontiguousarray(crop @ _LUMA)
        planes[3].append((luma, clipped.any(axis=2)))
        n, d = _blockiness_sums(luma)
        bnum += n
        bden += d

    def noise_level(c: int) -> float:
        """The 10th percentile over the blocks of plane c (3: luma, clipped where any channel is)."""
        values = np.concatenate([_block_noise(p, m) for p, m in planes[c]])
        gain = _NOISE_GAIN
        if values.size < _MIN_FREE_BLOCKS:
            values = np.concatenate([_block_noise_clipped(p, m) for p, m in planes[c]])
            gain = _NOISE_GAIN_CLIPPED
        return float(np.percentile(values, _NOISE_PERCENTILE)) * gain if values.size else 0.0

    noise = float(np.mean([noise_level(c) for c in range(3)]))
    luma_noise = noise_level(3)
    lumas = [p for p, _ in planes[3]]
    noise_var = max(luma_noise**2, _QUANT_VAR)
    sums = np.zeros(len(_BAND_SIGMAS))
    count = 0
    for luma in lumas:
        s, n = _band_energies(luma)
        sums += s
        count += n
    noise_energy = noise_var * _BAND_GAIN
    energy = np.maximum(sums / max(count, 1) - noise_energy, _MIN_BAND_ENERGY)
    snr = energy / noise_energy
    r = np.log2(energy[1:] / energy[:-1])  # r_i > 0: band i weaker than band i+1 (blur drains fine bands)
    blockiness = bnum / bden if bden > 0 else 1.0
    return _Raw(noise, luma_noise, float(r[0]), float(r[2]), float(snr[0]), float(snr[2]), blockiness)


def _blur_from(raw: _Raw) -> float:
    """Calibrated blur: the fine measure, the coarse one where the fine one saturates, the coarse one alone
    where noise drowns the finest band, NaN where it drowns both."""
    coarse = float(np.interp(raw.coarse, _COARSE_TABLE[1], _COARSE_TABLE[0]))
    if raw.fine_snr >= _MIN_SNR:
        fine = float(np.interp(raw.fine, _FINE_TABLE[1], _FINE_TABLE[0]))
        return max(fine, coarse if coarse >= _COARSE_FROM else 0.0)
    if raw.coarse_snr >= _MIN_SNR:
        return coarse
    return math.nan


def analyse_image(rgb: np.ndarray) -> Degradation:
    """Measure noise, blur and JPEG blockiness of one low-resolution image.

    Args:
        rgb: ``(H, W, 3)`` float32/float64 in [0, 1], or uint8 (0..255) / uint16 (0..65535). ``(H, W)``,
            ``(H, W, 1)`` (grey) and ``(H, W, 4)`` (alpha ignored) are accepted too.

    Returns:
        :class:`Degradation`. Images smaller than 16 pixels on a side cannot be measured and get the neutral
        ``Degradation(0.0, 0.0, 1.0)``.

    Raises:
        InputError: not an array, wrong shape or dtype, or NaN/inf pixels.

    Cost: bounded (the view is at most 262 144 pixels; see the module docstring), a few milliseconds.
    """
    raw = _measure(rgb)
    if raw is None:
        return Degradation(0.0, 0.0, 1.0)
    return Degradation(noise_sigma=raw.noise_sigma, blur=_blur_from(raw), blockiness=raw.blockiness)
