"""Image encoding and writing, at the edges: Pillow and its plugins, OpenCV and tifffile for 16-bit colour; every
file is written through :func:`invsr_cli.base.atomic.atomic_write_bytes`. Also the resizes applied before writing
(:func:`resize_rgb` for ``--scale`` below 4, :func:`upscale_alpha` for the alpha plane).

:func:`write_image` takes the model's float32 RGB in [0, 1] and the :class:`~invsr_cli.imaging.decode.LoadedImage` it
came from, which says how to write it back faithfully: grayscale or not, bit depth, ICC profile, EXIF.

Policies
--------
* **Formats written**: PNG, JPEG, WebP, TIFF, AVIF (Pillow's own codec, when built with it) and JPEG XL (with the
  ``invsr-cli[jxl]`` extra); without its codec a format fails with an :class:`~invsr_cli.base.errors.OutputError`
  that says what to install.
* **16-bit** outputs are written as PNG or TIFF; every other format is 8-bit (Pillow's AVIF and WebP encoders
  are 8-bit, and pillow-jxl-plugin marks 16-bit grayscale as linear light, which viewers would show with the
  wrong tone curve). 16-bit grayscale goes through Pillow (``I;16``); 16-bit colour or alpha PNG through OpenCV
  (``imencodeWithMetadata``: ICC, EXIF and XMP kept); 16-bit colour or alpha TIFF through ``tifffile``. 16-bit gray+alpha is written as RGBA with R = G = B (OpenCV's
  PNG encoder has no two-channel mode, and few readers understand two-channel 16-bit TIFF).
* **Metadata**: what each format's writer can really hold is one rule, :meth:`_Meta.held_by`, for the 8-bit
  and 16-bit paths alike: ICC and EXIF are kept in PNG, JPEG (EXIF up to one 64 KB APP1 segment), WebP and AVIF;
  JPEG XL keeps EXIF, but ``pillow-jxl-plugin`` cannot embed an ICC profile, so an RGB source with a profile is
  converted to sRGB, which JPEG XL assumes without one; a TIFF keeps the ICC profile and EXIF's descriptive
  main-IFD tags (Make, Model, DateTime, Artist, Copyright, ...): neither libtiff through Pillow nor tifffile can
  write the Exif and GPS sub-IFDs into a TIFF, so those are left out. :func:`check_writable` encodes a tiny
  picture with an input's metadata through the same code, so whatever a writer would still refuse fails when
  the input is read, before any compute. The provenance record (:mod:`invsr_cli.imaging.provenance`)
  is an XMP packet: PNG iTXt ``XML:com.adobe.xmp``, JPEG APP1, WebP/AVIF/JPEG XL XMP boxes, TIFF tag 700 (XMP).
  The source's own XMP is not carried over. ``strip_metadata`` writes none of ICC, EXIF and XMP.
* **Lossless**: PNG and TIFF are always lossless; ``lossless`` switches WebP (``exact``: colour under transparent
  pixels kept too) and JPEG XL to their lossless modes. JPEG and AVIF have no lossless mode here (Pillow's AVIF
  encoder converts to YCbCr, so even quality 100 is not exact): asking for it is an error.
* **Alpha and JPEG**: JPEG cannot hold alpha, so a transparent image written as JPEG is composited over white
  (what the picture looks like on a page), rather than exposing whatever colour lies under transparent pixels.
* **Grayscale** sources are written back as grayscale (L, or 16-bit), converted from the model's RGB output with
  the ITU-R 601 luma weights (as Pillow's ``convert("L")``). WebP has no grayscale mode: it is written as RGB.
  AVIF grayscale is 4:0:0.

Encoding failures are :class:`~invsr_cli.base.errors.OutputError` naming the file; bad settings (format, quality,
lossless for a lossy-only format) are :class:`~invsr_cli.base.errors.ConfigError`; the write itself fails as
:mod:`invsr_cli.base.atomic` says.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin, features

from invsr_cli.base.atomic import atomic_write_bytes
from invsr_cli.base.errors import ConfigError, OutputError, describe_exception
from invsr_cli.base.paths import display_path
from invsr_cli.imaging.decode import TIFF_EXIF_TAGS, LoadedImage, canonical_format, register_plugins
from invsr_cli.imaging.formats import LOSSY_ONLY_FORMATS, WRITE_FORMATS

__all__ = [
    "DEFAULT_QUALITY",
    "write_image",
    "check_writable",
    "upscale_alpha",
    "resize_rgb",
    "quantise",
]

DEFAULT_QUALITY = 95

_JPEG_MAX_EXIF = 65533
_TIFF_XMP = 700


def quantise(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Floats in [0, 1] (clamped) to uint8, or uint16 with ``bits=16``, rounded to nearest."""
    top = 65535 if bits == 16 else 255
    return np.rint(np.clip(x, 0.0, 1.0) * top).astype(np.uint16 if bits == 16 else np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)


@dataclass(frozen=True)
class _Meta:
    """The metadata blocks to write: ICC profile, EXIF (``Exif\0\0`` + TIFF, as Pillow gives it), XMP packet."""

    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None

    def held_by(self, fmt: str) -> _Meta:
        """What ``fmt``'s writer can really hold, 8-bit and 16-bit alike (the one rule; see the module docstring):
        JPEG's EXIF only up to one APP1 segment, JPEG XL no ICC profile (its pixels are converted to sRGB), TIFF
        EXIF's descriptive main-IFD tags only (no writer here can write the Exif and GPS sub-IFDs into a TIFF)."""
        if fmt == "jpg" and self.exif and len(self.exif) > _JPEG_MAX_EXIF:
            return replace(self, exif=None)
        if fmt == "jxl":
            return replace(self, icc=None)
        if fmt == "tiff":
            return replace(self, exif=_exif_main_ifd(self.exif))
        return self


def _raw_exif(exif: bytes) -> bytes:
    return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif


def _exif_main_tags(exif: bytes | None) -> dict[int, str]:
    """EXIF's descriptive main-IFD text tags (Make, Model, DateTime, ...) -- what a TIFF holds in its own IFD."""
    if not exif:
        return {}
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        return {t: parsed[t] for t in TIFF_EXIF_TAGS if isinstance(parsed.get(t), str) and parsed[t]}
    except Exception:
        return {}


def _exif_main_ifd(exif: bytes | None) -> bytes | None:
    """``exif`` reduced to :func:`_exif_main_tags`, as an EXIF block (None when nothing is left)."""
    tags = _exif_main_tags(exif)
    if not tags:
        return None
    out = Image.Exif()
    for t, v in tags.items():
        out[t] = v
    return out.tobytes()


def _encode_png16_colour(arr: np.ndarray, meta: _Meta) -> bytes:
    """16-bit RGB/RGBA PNG (HxWx3|4 uint16, RGB order) with OpenCV, metadata through imencodeWithMetadata."""
    import cv2

    bgr = np.ascontiguousarray(arr[..., [2, 1, 0, 3][: arr.shape[2]]])
    kinds, blobs = [], []
    for kind, blob in ((cv2.IMAGE_METADATA_ICCP, meta.icc), (cv2.IMAGE_METADATA_EXIF, meta.exif and
                       _raw_exif(meta.exif)), (cv2.IMAGE_METADATA_XMP, meta.xmp)):
        if blob:
            kinds.append(kind)
            blobs.append(np.frombuffer(blob, np.uint8))
    params = [cv2.IMWRITE_PNG_COMPRESSION, 6]
    if kinds:
        ok, buf = cv2.imencodeWithMetadata(".png", bgr, kinds, blobs, params)
    else:
        ok, buf = cv2.imencode(".png", bgr, params)
    if not ok:
        raise ValueError("OpenCV could not encode the 16-bit PNG")
    return buf.tobytes()


def _encode_tiff16_colour(arr: np.ndarray, meta: _Meta) -> bytes:
    """16-bit RGB/RGBA TIFF (HxWx3|4 uint16) with tifffile: deflate + horizontal predictor, ICC, XMP and EXIF's
    main-IFD text tags (tifffile cannot write the Exif/GPS sub-IFDs)."""
    import tifffile

    tags = _exif_main_tags(meta.exif)
    software = tags.pop(0x0131, False)  # False: tifffile writes no Software tag of its own
    extratags: list[tuple[int, str, int, Any, bool]] = [(t, "s", 0, v, True) for t, v in sorted(tags.items())]
    if meta.xmp:
        extratags.append((_TIFF_XMP, "B", len(meta.xmp), meta.xmp, True))
    buf = io.BytesIO()
    tifffile.imwrite(
        buf, arr, photometric="rgb", compression="zlib", predictor=True, iccprofile=meta.icc or None,
        extrasamples=[2] if arr.shape[2] == 4 else None, extratags=extratags, software=software, metadata=None,
    )
    return buf.getvalue()


def _to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Convert an RGB(A) image from its ICC profile to sRGB (for JPEG XL, whose plugin cannot embed a profile);
    a broken profile leaves the pixels as they are."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=im.mode) or im
    except Exception:
        return im


def _save_pillow(im: Image.Image, fmt: str, meta: _Meta, quality: int, lossless: bool,
                 icc_in_pixels: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    params: dict[str, Any] = {}
    if meta.icc:
        params["icc_profile"] = meta.icc
    if meta.exif and fmt != "tiff":
        params["exif"] = meta.exif
    if meta.xmp and fmt in ("jpg", "webp", "avif", "jxl"):
        params["xmp"] = meta.xmp
    if fmt == "png":
        if meta.xmp:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8"))
            params["pnginfo"] = info
        im.save(buf, "PNG", compress_level=6, **params)
    elif fmt == "jpg":
        im.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **params)
    elif fmt == "webp":
        if lossless:  # exact: keep the colour under transparent pixels too. quality is the effort here:
            # 50 gave the same size as 100 in a third of the time on a 2048x1536 upscale (scripts/format_bench.py)
            im.save(buf, "WEBP", lossless=True, exact=True, quality=50, method=4, **params)
        else:
            im.save(buf, "WEBP", quality=quality, **params)
    elif fmt == "avif":
        if im.mode != "L":  # grayscale is 4:0:0 (Pillow's default for L)
            params["subsampling"] = "4:4:4" if quality >= 90 else "4:2:0"
        im.save(buf, "AVIF", quality=quality, **params)
    elif fmt == "jxl":
        if icc_in_pixels and im.mode in ("RGB", "RGBA"):
            im = _to_srgb(im, icc_in_pixels)
        if lossless:
            im.save(buf, "JXL", lossless=True, **params)
        else:
            im.save(buf, "JXL", quality=quality, **params)
    else:  # tiff: EXIF and XMP (tag 700) go in the TIFF's own IFD
        if meta.exif or meta.xmp:
            exif = Image.Exif()
            if meta.exif:
                exif.load(meta.exif)  # main-IFD text tags only (_Meta.held_by)
            if meta.xmp:
                exif[_TIFF_XMP] = meta.xmp
            params["exif"] = exif
        compression = "tiff_adobe_deflate" if features.check("libtiff") else None
        im.save(buf, "TIFF", compression=compression, **params)
    return buf.getvalue()


def _encode(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    source: LoadedImage,
    fmt: str,
    quality: int | None,
    *,
    lossless: bool = False,
    xmp: bytes | None = None,
    strip_metadata: bool = False,
) -> bytes:
    rgb = np.clip(rgb.astype(np.float32, copy=False), 0.0, 1.0)
    if alpha is not None:
        alpha = np.clip(alpha.astype(np.float32, copy=False), 0.0, 1.0)
        if fmt == "jpg":  # no alpha in JPEG: composite over white
            rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
            alpha = None
    planes = [_luma(rgb)[..., None]] if source.grayscale else [rgb]
    if alpha is not None:
        planes.append(alpha[..., None])
    bits = 16 if source.bit_depth == 16 and fmt in ("png", "tiff") else 8
    arr = quantise(np.concatenate(planes, axis=2), bits)
    given = _Meta() if strip_metadata else _Meta(source.icc, source.exif, xmp)
    meta = given.held_by(fmt)
    q = DEFAULT_QUALITY if quality is None else int(quality)

    if bits == 16 and arr.shape[2] != 1:  # Pillow has no 16-bit colour modes
        if arr.shape[2] == 2:  # gray+alpha: as RGBA (see the module docstring)
            arr = arr[..., [0, 0, 0, 1]]
        return _encode_png16_colour(arr, meta) if fmt == "png" else _encode_tiff16_colour(arr, meta)
    im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)  # 16-bit gray: I;16
    return _save_pillow(im, fmt, meta, q, lossless, icc_in_pixels=given.icc if fmt == "jxl" else None)


def write_image(
    path: str | os.PathLike[str],
    rgb_hr: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    source: LoadedImage,
    format: str,
    quality: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    strip_metadata: bool = False,
    lossless: bool = False,
) -> int:
    """Encode and atomically write an upscaled image; returns the bytes written.

    ``rgb_hr``: float32 ``(H, W, 3)`` in [0, 1] (values outside are clipped); ``alpha``: float32 ``(H, W)`` or
    None. The grayscale flag, bit depth, ICC and EXIF come from ``source``. ``format``: png, jpg, webp, tiff,
    avif or jxl (``Job.format``; extension spellings jpeg/jpe/jfif/tif accepted); ``quality`` (1..100) is used
    by jpg, webp, avif and jxl, default 95. ``provenance``: the record to embed as XMP
    (:func:`invsr_cli.imaging.provenance.provenance_record`), None for none. ``strip_metadata`` writes no ICC, EXIF or
    XMP at all (``provenance`` is ignored). ``lossless``: WebP and JPEG XL lossless (PNG and TIFF always are);
    a :class:`~invsr_cli.base.errors.ConfigError` for jpg and avif, which have no lossless mode.
    """
    if rgb_hr.ndim != 3 or rgb_hr.shape[2] != 3:
        raise ValueError(f"rgb_hr must be (H, W, 3), got {rgb_hr.shape}")
    if alpha is not None and alpha.shape != rgb_hr.shape[:2]:
        raise ValueError(f"alpha must be {rgb_hr.shape[:2]}, got {alpha.shape}")
    data = _checked_encode(Path(path), rgb_hr, alpha, source, format, quality, provenance, strip_metadata,
                           lossless)
    return atomic_write_bytes(path, data)


def check_writable(
    path: str | os.PathLike[str],
    *,
    source: LoadedImage,
    format: str,
    quality: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    strip_metadata: bool = False,
    lossless: bool = False,
) -> None:
    """Raise what :func:`write_image` would for ``source`` written as ``format`` with these settings, before any
    compute: the settings, the codec, and the source's metadata, by encoding an 8x8 picture of the same kind
    (grayscale, bit depth, alpha) with the same metadata through the same code. Nothing is written."""
    rgb = np.full((8, 8, 3), 0.5, np.float32)
    alpha = None if source.alpha is None else np.ones((8, 8), np.float32)
    _checked_encode(Path(path), rgb, alpha, source, format, quality, provenance, strip_metadata, lossless)


def _checked_encode(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, source: LoadedImage, format: str,
                    quality: int | None, provenance: Mapping[str, Any] | None, strip_metadata: bool,
                    lossless: bool) -> bytes:
    fmt = canonical_format(format)
    if fmt not in WRITE_FORMATS:
        raise ConfigError(f"`format` must be one of {', '.join(WRITE_FORMATS)}; got {format!r}")
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ConfigError(f"`quality` must be between 1 and 100, got {quality}")
    if lossless and fmt in LOSSY_ONLY_FORMATS:
        raise ConfigError(f"{display_path(path)}: {fmt} has no lossless mode; use png, webp, tiff or jxl with "
                          "--lossless")
    if fmt == "jxl" and "jxl" not in register_plugins():
        raise OutputError(f"{display_path(path)}: cannot encode jxl: needs `pip install 'invsr-cli[jxl]'`")
    if fmt == "avif" and not features.check("avif"):
        raise OutputError(f"{display_path(path)}: cannot encode avif: this Pillow has no AVIF codec "
                          "(needs Pillow >= 11.3 built with libavif)")
    xmp = None
    if provenance is not None and not strip_metadata:
        from invsr_cli.imaging.provenance import to_xmp

        xmp = to_xmp(provenance)
    try:
        return _encode(rgb, alpha, source, fmt, quality, lossless=lossless, xmp=xmp, strip_metadata=strip_metadata)
    except Exception as exc:
        raise OutputError(f"{display_path(path)}: cannot encode {fmt}: {describe_exception(exc)}") from exc


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    w, h = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (width, height), got {size}")
    if (h, w) == arr.shape[:2]:
        return arr.astype(np.float32, copy=True)
    shrinking = h <= arr.shape[0] and w <= arr.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(arr, dtype=np.float32), (w, h), interpolation=interp)
    return np.clip(out, 0.0, 1.0, out=out)


def upscale_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(h, w)`` float alpha to ``size = (width, height)`` (Pillow/OpenCV order): bicubic when
    enlarging, area averaging when shrinking, clamped to [0, 1]."""
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be (h, w), got {alpha.shape}")
    return _resize(alpha, size)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(h, w, 3)`` float image to ``size = (width, height)`` (Pillow/OpenCV order), for ``--scale``
    below 4: area averaging when shrinking (no aliasing), bicubic otherwise; clamped to [0, 1]."""
    if rgb.ndim != 3:
        raise ValueError(f"rgb must be (h, w, 3), got {rgb.shape}")
    return _resize(rgb, size)
