"""The Real-ESRGAN second-order degradations that InvSR trains and is tested on, reproducibly.

Pure numpy + OpenCV (+ Pillow for the plain bicubic profile): no torch, no file I/O. Written from the facts in
``shared/invsr/training/TRAINING.md`` sections 2, 3 and 11 (no code copied, no ``basicsr``).

API (kept small and stable; ``invsr degrade``, ``invsr eval`` and ``invsr train`` build on it)::

    rng = make_rng(seed, rel_path)               # one generator per image: seed + a stable hash of its path
    hr = prepare_hr(to_rgb8(rgb, alpha), size)   # the authors' test-set GT: short side -> size (area), centre crop
    lr, params = degrade(hr, "testing", rng)     # uint8 (H/4, W/4, 3) and every sampled parameter (JSON-ready)
    kernel = make_kernel(params["stage1"]["kernel"])   # rebuild any recorded kernel (float64, sums to 1)

``PROFILES`` names the profiles: ``training`` (configs/sd-turbo-sr-ldis.yaml: both stages), ``testing``
(configs/degradation_testing_realesrgan.yaml: the synthetic test set, stage 2 off) and ``bicubic`` (plain x4
down with Pillow's antialiased bicubic, the classic benchmark degradation). ``PROFILE_SPECS`` holds their
parameters as frozen dataclasses; :func:`degrade` also takes a :class:`Profile` (e.g. ``dataclasses.replace``
of one, to switch stages off for experiments and tests).

The pipeline, per image, in float32 RGB in [0, 1]:

1. Stage 1: blur with kernel 1 (always); resize by a random factor (up / down / keep) with a random mode
   (area / bilinear / bicubic); Gaussian or Poisson noise (colour, or grey with some probability), clipped to
   [0, 1]; JPEG at a random quality.
2. Stage 2 (``second_order_prob``; 0 in ``testing``): blur with kernel 2 (``blur_prob``); resize to a random
   factor of the final LR size; noise. No JPEG here (as the authors).
3. Final stage, its order 50/50: [resize to H/4 x W/4 with a random mode, then the final sinc filter (or none)]
   and JPEG, in either order; then quantisation to 8 bit (round half to even, clip).

Kernels: sizes odd, drawn uniformly from the profile's list; the types isotropic / anisotropic Gaussian,
generalised Gaussian ``exp(-0.5 q^beta)``, plateau ``1 / (1 + q^beta)`` (``q = x^T Sigma^-1 x``), or with
``sinc_prob`` a circular low-pass (2-D sinc, ``omega J1(omega r) / (2 pi r)``; cutoff omega from U(pi/3, pi), or
U(pi/5, pi) for kernels of 13 and more). Every kernel is normalised to sum 1 and applied by correlation with
reflect-101 borders at its own size (the authors zero-pad kernels to 21/15/7 first, which changes nothing:
the padding is zeros).

Differences from the authors' GPU pipeline, each deliberate: JPEG is real JPEG (OpenCV/libjpeg, 4:2:0, integer
quality drawn uniformly from the range) where training used the differentiable DiffJPEG; resizes are OpenCV's
``INTER_AREA`` / ``INTER_LINEAR`` / ``INTER_CUBIC`` where the authors used torch's ``area`` / ``bilinear`` /
``bicubic`` (the same kernels, but torch's ``area`` enlarges by pixel replication); choices the trainer shares
across a batch are drawn per image here; nothing is reused from a pool.

Reproducibility: every random number of one image comes from its own ``numpy.random.Generator`` (PCG64) seeded by
SHA-256 of the seed and the image's relative path (:func:`make_rng`), drawn in a fixed order. The same seed and
path therefore give the same LR bit for bit in any order, any process count, and on any machine with the same
numpy, OpenCV and libjpeg versions (float32 OpenCV filtering is exact per build; a different build could, very
rarely, flip one 8-bit rounding).

Inputs: :func:`to_rgb8` turns what ``imageio.read_image`` gives (float RGB in [0, 1], optional alpha) or uint8 /
uint16 / grey / RGBA arrays into the 8-bit RGB ground truth: 16-bit is rounded to 8 bit (the pairs are 8-bit,
like the paper's), alpha is flattened over white, grey is replicated. :func:`prepare_hr` refuses an image whose
short side is below ``size`` (enlarging it would make a blurred "ground truth").
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from invsr_cli.base.errors import InputError

__all__ = [
    "PROFILES",
    "PROFILE_SPECS",
    "SCALE",
    "KernelSpec",
    "NoiseSpec",
    "Profile",
    "ResizeSpec",
    "StageSpec",
    "degrade",
    "make_kernel",
    "make_rng",
    "prepare_hr",
    "to_rgb8",
]

SCALE = 4  # the LR is exactly H/4 x W/4


@dataclass(frozen=True)
class KernelSpec:
    """How one blur kernel is drawn. ``types``: (name, probability) pairs summing to 1."""

    sizes: tuple[int, ...]
    sigma: tuple[float, float]
    types: tuple[tuple[str, float], ...]
    sinc_prob: float
    beta_gaussian: tuple[float, float] = (0.5, 4.0)  # with p .5 U(lo, 1), else U(1, hi)
    beta_plateau: tuple[float, float] = (1.0, 2.0)


@dataclass(frozen=True)
class ResizeSpec:
    """Resize by a factor: up / down / keep with ``probs``; factors uniform in ``up`` and ``down``."""

    probs: tuple[float, float, float]
    up: tuple[float, float]
    down: tuple[float, float]


@dataclass(frozen=True)
class NoiseSpec:
    """Gaussian with ``gaussian_prob`` (sigma in 8-bit levels), else Poisson (scale); grey with ``gray_prob``."""

    gaussian_prob: float
    sigma: tuple[float, float]
    poisson_scale: tuple[float, float]
    gray_prob: float


@dataclass(frozen=True)
class StageSpec:
    """One degradation stage. ``jpeg``: quality range, or None for no JPEG in this stage."""

    kernel: KernelSpec
    blur_prob: float
    resize: ResizeSpec
    noise: NoiseSpec
    jpeg: tuple[int, int] | None


@dataclass(frozen=True)
class Profile:
    """A whole pipeline. ``final_jpeg`` None with ``final_resize`` False leaves the final stage out (tests)."""

    name: str
    stage1: StageSpec | None
    second_order_prob: float
    stage2: StageSpec | None
    final_sinc_prob: float
    final_sinc_sizes: tuple[int, ...]
    final_jpeg: tuple[int, int] | None
    final_resize: bool = True


_TYPES_TRAINING = (
    ("iso", 0.45),
    ("aniso", 0.25),
    ("generalized_iso", 0.12),
    ("generalized_aniso", 0.03),
    ("plateau_iso", 0.12),
    ("plateau_aniso", 0.03),
)
_TYPES_TESTING = (("iso", 0.6), ("aniso", 0.4))
_MODES = ("area", "bilinear", "bicubic")
_CV2_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}

PROFILE_SPECS: dict[str, Profile] = {
    "training": Profile(
        name="training",
        stage1=StageSpec(
            kernel=KernelSpec(tuple(range(3, 21, 2)), (0.2, 3.0), _TYPES_TRAINING, 0.1),
            blur_prob=1.0,
            resize=ResizeSpec((0.2, 0.7, 0.1), (1.0, 1.5), (0.15, 1.0)),
            noise=NoiseSpec(0.5, (1.0, 30.0), (0.05, 3.0), 0.4),
            jpeg=(30, 95),
        ),
        second_order_prob=0.5,
        stage2=StageSpec(
            kernel=KernelSpec(tuple(range(3, 15, 2)), (0.2, 1.5), _TYPES_TRAINING, 0.1),
            blur_prob=0.8,
            resize=ResizeSpec((0.3, 0.4, 0.3), (1.0, 1.2), (0.3, 1.0)),
            noise=NoiseSpec(0.5, (1.0, 25.0), (0.05, 2.5), 0.4),
            jpeg=None,
        ),
        final_sinc_prob=0.8,
        final_sinc_sizes=tuple(range(3, 15, 2)),
        final_jpeg=(30, 95),
    ),
    "testing": Profile(
        name="testing",
        stage1=StageSpec(
            kernel=KernelSpec(tuple(range(3, 13, 2)), (0.2, 0.8), _TYPES_TESTING, 0.1),
            blur_prob=1.0,
            resize=ResizeSpec((0.2, 0.7, 0.1), (1.0, 1.5), (0.5, 1.0)),
            noise=NoiseSpec(0.5, (1.0, 15.0), (0.05, 0.3), 0.4),
            jpeg=(70, 95),
        ),
        second_order_prob=0.0,
        stage2=None,
        final_sinc_prob=0.2,
        final_sinc_sizes=(3, 5),
        final_jpeg=(80, 100),
    ),
}

#: Every profile name, ``bicubic`` included (it has no spec: Pillow's bicubic x4 down, no randomness).
PROFILES: tuple[str, ...] = ("training", "testing", "bicubic")


# ------------------------------------------------------------------------------------------------------------
# Seeding and input preparation
# ------------------------------------------------------------------------------------------------------------


def make_rng(seed: int, rel_path: str) -> np.random.Generator:
    """The generator of one image: PCG64 seeded by SHA-256 of ``seed`` and ``rel_path`` (``/``-separated).

    Independent of the order images are processed in and of Python's hash randomisation.
    """
    key = f"invsr-degrade\x00{int(seed)}\x00{str(rel_path).replace(chr(92), '/')}".encode()
    digest = hashlib.sha256(key).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def to_rgb8(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """An image as the 8-bit RGB ground truth (see the module docstring).

    Args:
        rgb: float (H, W, 3) in [0, 1] (``LoadedImage.rgb``), or uint8 / uint16 of shape (H, W), (H, W, 1),
            (H, W, 3) or (H, W, 4) (the fourth channel is alpha).
        alpha: optional (H, W) alpha in the same scale as ``rgb``'s dtype (float in [0, 1] for float input).
    """
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"to_rgb8: expected an (H, W[, 1|3|4]) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        full = 255.0
    elif arr.dtype == np.uint16:
        full = 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        full = 1.0
    else:
        raise InputError(f"to_rgb8: unsupported dtype {arr.dtype}")
    x = arr.astype(np.float64) / full
    if x.shape[2] == 4:
        x, alpha_arr = x[:, :, :3], x[:, :, 3]
    else:
        alpha_arr = None if alpha is None else np.asarray(alpha, np.float64) / full
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    if alpha_arr is not None:
        a = np.clip(alpha_arr, 0.0, 1.0)[:, :, None]
        x = x * a + (1.0 - a)  # over white
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def prepare_hr(hr: np.ndarray, size: int) -> np.ndarray:
    """The authors' test-set ground truth: short side resized to ``size`` with area filtering, centre crop to
    ``size x size``. ``size`` must be a positive multiple of 4; a short side below it is refused."""
    if size <= 0 or size % SCALE:
        raise InputError(f"size must be a positive multiple of {SCALE}, got {size}")
    h, w = hr.shape[:2]
    short = min(h, w)
    if short < size:
        raise InputError(f"{w}x{h} is smaller than --size {size} (short side {short}); refused, not enlarged")
    if short != size:
        if h <= w:
            nh, nw = size, max(size, round(w * size / h))
        else:
            nh, nw = max(size, round(h * size / w)), size
        hr = cv2.resize(hr, (nw, nh), interpolation=cv2.INTER_AREA)
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(hr[top : top + size, left : left + size])


# ------------------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------------------

_J1_POINTS = 128  # trapezoid points over one period: exact to ~1e-15 for the arguments used (< 40)


def _bessel_j1(x: np.ndarray) -> np.ndarray:
    """J1 by Bessel's integral (1/2pi) \u222b cos(t - x sin t) dt over a period (trapezoid, spectrally exact)."""
    t = np.arange(_J1_POINTS) * (2.0 * math.pi / _J1_POINTS) - math.pi
    return np.cos(t - x[..., None] * np.sin(t)).mean(axis=-1)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    return np.meshgrid(ax, ax)


def make_kernel(params: dict[str, Any]) -> np.ndarray:
    """The float64 ``(size, size)`` kernel a recorded parameter dict describes, normalised to sum 1.

    ``params``: ``{"type": "sinc", "size", "omega"}`` or ``{"type": <gaussian type>, "size", "sigma_x",
    "sigma_y", "rotation", "beta"?}``.
    """
    size = int(params["size"])
    xx, yy = _grid(size)
    kind = params["type"]
    if kind == "sinc":
        omega = float(params["omega"])
        r = np.hypot(xx, yy)
        safe = np.where(r == 0, 1.0, r)
        k = np.where(r == 0, omega**2 / (4 * math.pi), omega * _bessel_j1(omega * safe) / (2 * math.pi * safe))
    else:
        sx, sy, theta = float(params["sigma_x"]), float(params["sigma_y"]), float(params["rotation"])
        c, s = math.cos(theta), math.sin(theta)
        rot = np.array([[c, -s], [s, c]])
        inv = np.linalg.inv(rot @ np.diag([sx * sx, sy * sy]) @ rot.T)
        q = inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy
        if kind in ("iso", "aniso"):
            k = np.exp(-0.5 * q)
        elif kind.startswith("generalized"):
            k = np.exp(-0.5 * np.power(q, float(params["beta"])))
        elif kind.startswith("plateau"):
            k = 1.0 / (1.0 + np.power(q, float(params["beta"])))
        else:
            raise InputError(f"unknown kernel type {kind!r}")
    return k / k.sum()


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _choice(rng: np.random.Generator, options: tuple[Any, ...], probs: tuple[float, ...] | None = None) -> Any:
    if probs is None:
        return options[int(rng.integers(len(options)))]
    return options[int(np.searchsorted(np.cumsum(probs), rng.random() * sum(probs), side="right"))]


def _sample_sinc(rng: np.random.Generator, size: int, wide_from: int | None = 13) -> dict[str, Any]:
    low = math.pi / 5 if wide_from is not None and size >= wide_from else math.pi / 3
    return {"type": "sinc", "size": size, "omega": _uniform(rng, (low, math.pi))}


def _sample_kernel(rng: np.random.Generator, spec: KernelSpec) -> dict[str, Any]:
    size = int(_choice(rng, spec.sizes))
    if rng.random() < spec.sinc_prob:
        return _sample_sinc(rng, size)
    names = tuple(n for n, _ in spec.types)
    kind = _choice(rng, names, tuple(p for _, p in spec.types))
    sx = _uniform(rng, spec.sigma)
    if kind.endswith("aniso"):
        sy, theta = _uniform(rng, spec.sigma), _uniform(rng, (-math.pi, math.pi))
    else:
        sy, theta = sx, 0.0
    params: dict[str, Any] = {"type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "rotation": theta}
    if kind.startswith(("generalized", "plateau")):
        lo, hi = spec.beta_gaussian if kind.startswith("generalized") else spec.beta_plateau
        params["beta"] = _uniform(rng, (lo, 1.0)) if rng.random() < 0.5 else _uniform(rng, (1.0, hi))
    return params


# ------------------------------------------------------------------------------------------------------------
# Operations (float32 RGB in [0, 1])
# ------------------------------------------------------------------------------------------------------------


def _filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(img, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


def _resize(img: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    return cv2.resize(img, (max(1, width), max(1, height)), interpolation=_CV2_MODES[mode])


def _sample_resize(rng: np.random.Generator, spec: ResizeSpec) -> tuple[str, float, str]:
    kind = _choice(rng, ("up", "down", "keep"), spec.probs)
    scale = _uniform(rng, spec.up) if kind == "up" else _uniform(rng, spec.down) if kind == "down" else 1.0
    return kind, scale, _choice(rng, _MODES)


def _quantise(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def _poisson_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Poisson noise of a quantised image, its counts scaled by the next power of two of its distinct levels."""
    q = _quantise(img).astype(np.float32) / 255.0
    vals = float(2.0 ** math.ceil(math.log2(len(np.unique(q)))))
    return (rng.poisson(q.astype(np.float64) * vals) / vals).astype(np.float32) - q


def _add_noise(rng: np.random.Generator, img: np.ndarray, spec: NoiseSpec) -> tuple[np.ndarray, dict[str, Any]]:
    gaussian = rng.random() < spec.gaussian_prob
    h, w = img.shape[:2]
    if gaussian:
        sigma = _uniform(rng, spec.sigma)
        gray = bool(rng.random() < spec.gray_prob)
        noise = rng.standard_normal((h, w, 1 if gray else 3), dtype=np.float32) * np.float32(sigma / 255.0)
        info: dict[str, Any] = {"kind": "gaussian", "sigma": sigma, "gray": gray}
    else:
        scale = _uniform(rng, spec.poisson_scale)
        gray = bool(rng.random() < spec.gray_prob)
        base = (img @ _GRAY)[:, :, None] if gray else img
        noise = _poisson_noise(rng, base) * np.float32(scale)
        info = {"kind": "poisson", "scale": scale, "gray": gray}
    return np.clip(img + noise, 0.0, 1.0).astype(np.float32), info


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    bgr = cv2.cvtColor(_quantise(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise InputError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _jpeg_quality(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1], endpoint=True))


def _stage(
    rng: np.random.Generator, img: np.ndarray, spec: StageSpec, size_of: tuple[int, int] | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """One stage; ``size_of`` (w, h): resize relative to it (stage 2) instead of to the current image."""
    info: dict[str, Any] = {}
    kernel = _sample_kernel(rng, spec.kernel)
    if spec.blur_prob >= 1.0 or rng.random() < spec.blur_prob:
        img = _filter(img, make_kernel(kernel))
        info["kernel"] = kernel
    else:
        info["kernel"] = None
    kind, scale, mode = _sample_resize(rng, spec.resize)
    ref_w, ref_h = size_of if size_of is not None else (img.shape[1], img.shape[0])
    width, height = int(ref_w * scale), int(ref_h * scale)
    if (width, height) != (img.shape[1], img.shape[0]):
        img = _resize(img, width, height, mode)
    info["resize"] = {"kind": kind, "scale": scale, "mode": mode, "size": [img.shape[1], img.shape[0]]}
    img, info["noise"] = _add_noise(rng, img, spec.noise)
    if spec.jpeg is not None:
        info["jpeg_quality"] = quality = _jpeg_quality(rng, spec.jpeg)
        img = _jpeg(img, quality)
    return img, info


def _final(rng: np.random.Generator, img: np.ndarray, profile: Profile, lr_w: int, lr_h: int) -> tuple[np.ndarray, dict[str, Any]]:
    jpeg_first = bool(rng.random() < 0.5)
    mode = _choice(rng, _MODES)
    sinc = None
    if rng.random() < profile.final_sinc_prob:
        sinc = _sample_sinc(rng, int(_choice(rng, profile.final_sinc_sizes)), wide_from=None)
    quality = _jpeg_quality(rng, profile.final_jpeg) if profile.final_jpeg is not None else None

    def resize_and_sinc(x: np.ndarray) -> np.ndarray:
        if profile.final_resize:
            x = _resize(x, lr_w, lr_h, mode)
        return _filter(x, make_kernel(sinc)) if sinc is not None else x

    if jpeg_first and quality is not None:
        img = resize_and_sinc(_jpeg(img, quality))
    else:
        img = resize_and_sinc(img)
        img = _jpeg(img, quality) if quality is not None else img
    order = "jpeg_first" if jpeg_first else "resize_first"
    return img, {"order": order, "resize_mode": mode, "sinc": sinc, "jpeg_quality": quality}


def degrade(hr: np.ndarray, profile: str | Profile, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade one 8-bit RGB ground truth into its x4 low-resolution input.

    Args:
        hr: uint8 ``(H, W, 3)``; H and W multiples of 4.
        profile: a name in :data:`PROFILES` or a :class:`Profile`.
        rng: the image's generator (:func:`make_rng`); drawn from in a fixed order.

    Returns:
        ``(lr, params)``: uint8 ``(H/4, W/4, 3)`` (the size of ``hr`` when a test profile leaves the final resize
        out), and a JSON-serialisable dict of every sampled parameter: ``profile``, ``stage1``, ``stage2``
        (None when skipped), ``final``, ``hr_size`` and ``lr_size`` (``[width, height]``).
    """
    if not isinstance(hr, np.ndarray) or hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
        raise InputError("degrade: hr must be a uint8 (H, W, 3) array")
    h, w = hr.shape[:2]
    if h % SCALE or w % SCALE or h < SCALE or w < SCALE:
        raise InputError(f"degrade: {w}x{h} is not a multiple of {SCALE} on both sides")
    lr_w, lr_h = w // SCALE, h // SCALE
    if isinstance(profile, str):
        if profile == "bicubic":
            from PIL import Image

            lr = np.asarray(Image.fromarray(hr).resize((lr_w, lr_h), Image.Resampling.BICUBIC))
            return lr, {"profile": "bicubic", "hr_size": [w, h], "lr_size": [lr_w, lr_h]}
        if profile not in PROFILE_SPECS:
            raise InputError(f"unknown degradation profile {profile!r}; allowed: {', '.join(PROFILES)}")
        profile = PROFILE_SPECS[profile]
    img = hr.astype(np.float32) / 255.0
    params: dict[str, Any] = {"profile": profile.name, "stage1": None, "stage2": None}
    if profile.stage1 is not None:
        img, params["stage1"] = _stage(rng, img, profile.stage1, None)
    if profile.stage2 is not None and rng.random() < profile.second_order_prob:
        img, params["stage2"] = _stage(rng, img, profile.stage2, (lr_w, lr_h))
    img, params["final"] = _final(rng, img, profile, lr_w, lr_h)
    lr = _quantise(img)
    params["hr_size"], params["lr_size"] = [w, h], [lr.shape[1], lr.shape[0]]
    return lr, params
