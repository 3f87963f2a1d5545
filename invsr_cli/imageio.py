"""Image decoding and encoding, at the edges: Pillow (OpenCV for 16-bit colour), atomic writes.

Reading (:func:`read_image`) gives float32 RGB in [0, 1] for the model plus what is needed to write the result
back faithfully: alpha (kept separately), whether the image is grayscale, its bit depth (8 or 16), the ICC profile
and the EXIF block (orientation applied to the pixels and reset to 1).

Policies
--------
* **Formats read**: PNG, JPEG (and MPO, the multi-picture JPEG of many cameras: its first, primary picture),
  WebP, TIFF, BMP and GIF, recognised by content, not by extension. Other formats Pillow knows are refused (some,
  like EPS, would run external programs).
* **Animated / multi-frame files** (animated GIF/PNG/WebP, multi-page TIFF) are refused with
  ``"animated image with N frames; invsr upscales still images only"``: picking one frame silently would lose
  the rest.
* **Limits**: ``max_pixels`` is checked from the header before anything is decoded; Pillow's own
  decompression-bomb check stays on: above twice ``Image.MAX_IMAGE_PIXELS`` (about 179 MP by default) Pillow
  refuses the file inside ``Image.open``, before ``max_pixels`` is looked at, with its own numbers.
* **Truncated files** are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False and every image is fully
  decoded before use).
* **16-bit**: 16-bit grayscale PNG/TIFF are read with Pillow; Pillow would silently reduce 16-bit RGB/RGBA/LA
  PNG/TIFF to 8 bits, so those pixels are decoded with OpenCV (metadata still from Pillow). 16-bit outputs are
  written as PNG or TIFF only; 16-bit colour or alpha outputs use a small built-in PNG/TIFF encoder (PNG keeps ICC
  and EXIF; TIFF keeps ICC only). A 16-bit gray+alpha TIFF is written as RGBA (few readers, not Pillow nor
  OpenCV, understand two-channel 16-bit TIFF).
* **Alpha and JPEG**: JPEG cannot hold alpha, so a transparent image written as JPEG is composited over white
  (what the picture looks like on a page), rather than exposing whatever colour lies under transparent pixels.
* **Grayscale** sources are written back as grayscale (L, or 16-bit), converted from the model's RGB output with
  the ITU-R 601 luma weights (as Pillow's ``convert("L")``). WebP has no grayscale mode: it is written as RGB.

Every read failure is an :class:`~invsr_cli.errors.ImageReadError` whose message is one line naming the file;
writes are atomic (temporary file in the destination folder, fsync, rename) and fail with
:class:`~invsr_cli.errors.OutputError` or, on ENOSPC/EIO/EDQUOT, :class:`~invsr_cli.errors.DiskFullError`.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError, features

from invsr_cli.discover import display_path
from invsr_cli.errors import ConfigError, DiskFullError, ImageReadError, OutputError

__all__ = [
    "ImageInfo",
    "LoadedImage",
    "READ_FORMATS",
    "WRITE_FORMATS",
    "TEMP_SUFFIX",
    "probe_image",
    "read_image",
    "write_image",
    "atomic_write_bytes",
    "cleanup_stale_temps",
    "upscale_alpha",
    "resize_rgb",
    "canonical_format",
]

# Pillow format names we decode (content-detected), and our canonical lower-case names for them.
_FORMAT_NAMES = {
    "PNG": "png",
    "JPEG": "jpg",
    "MPO": "jpg",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "DIB": "bmp",
    "GIF": "gif",
}
READ_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "DIB", "GIF")  # MPO comes via JPEG
WRITE_FORMATS: tuple[str, ...] = ("png", "jpg", "webp", "tiff")
_FORMAT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff"}
TEMP_SUFFIX = ".invsr-tmp"
DEFAULT_QUALITY = 95

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EIO} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
_ORIENTATION = 0x0112
# Descriptive tags worth carrying over from a TIFF source's IFD0 (the rest describe the TIFF's own layout).
_TIFF_EXIF_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_EXIF_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS
_JPEG_MAX_EXIF = 65533

ImageFile.LOAD_TRUNCATED_IMAGES = False  # the default; a truncated file must be an error, never padded


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. ``width``/``height`` are the stored size (for TIFF Pillow already applies the
    orientation tag; for other formats an EXIF rotation is not reflected here)."""

    width: int
    height: int
    format: str
    mode: str
    n_frames: int


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image, EXIF orientation applied.

    ``rgb``: float32 ``(height, width, 3)`` in [0, 1] (grayscale replicated to 3 channels); ``alpha``: float32
    ``(height, width)`` in [0, 1] or None; ``exif`` has its Orientation reset to 1.
    """

    path: Path
    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    bit_depth: int
    format: str
    icc: bytes | None
    exif: bytes | None
    width: int
    height: int
    mode: str = ""


def canonical_format(name: str) -> str:
    """``"JPEG"``/``"jpeg"``/``"jpe"``/``"jfif"``/``"MPO"`` -> ``"jpg"``, ``"tif"`` -> ``"tiff"``, others
    lower-cased (so a file extension or a Pillow format name both work)."""
    upper = name.upper()
    if upper in _FORMAT_NAMES:
        return _FORMAT_NAMES[upper]
    low = name.lower()
    return _FORMAT_ALIASES.get(low, low)


def _fail(path: Path | str, reason: str) -> ImageReadError:
    reason = " ".join(str(reason).split())  # one line, whatever the library said
    return ImageReadError(f"{display_path(path)}: {reason}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_file(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except OSError as exc:
        raise _fail(path, f"cannot stat: {exc.strerror or _describe(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file")  # a FIFO or device would block or never end
    if st.st_size == 0:
        raise _fail(path, "empty file (0 bytes)")


def _open(path: Path, fp: Any) -> Image.Image:
    try:
        return Image.open(fp, formats=READ_FORMATS)
    except UnidentifiedImageError:
        raise _fail(
            path, "not a supported image (PNG, JPEG, WebP, TIFF, BMP or GIF) or corrupt header"
        ) from None
    except Image.DecompressionBombError as exc:
        raise _fail(path, f"refused as a possible decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise _fail(path, f"unreadable header ({_describe(exc)})") from None


def _open_file(path: Path) -> Any:
    try:
        return open(path, "rb")  # closed by the caller's `with`
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except IsADirectoryError:
        raise _fail(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise _fail(path, f"cannot open: {exc.strerror or _describe(exc)}") from None


def _n_frames(im: Image.Image) -> int:
    return int(getattr(im, "n_frames", 1) or 1)


def _check_pixels(path: Path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise _fail(path, f"{w}x{h} = {w * h / 1e6:.1f} MP exceeds --max-pixels {max_pixels / 1e6:.1f} MP")


def probe_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> ImageInfo:
    """Read the header only (no pixel decoding). Raises :class:`ImageReadError`, also for an image larger than
    ``max_pixels`` (the same check and message as :func:`read_image`)."""
    path = Path(path)
    _check_file(path)
    with _open_file(path) as fp, _open(path, fp) as im:
        try:
            n_frames = _n_frames(im)
        except Exception as exc:
            raise _fail(path, f"unreadable frames ({_describe(exc)})") from None
        _check_pixels(path, im.width, im.height, max_pixels)
        return ImageInfo(im.width, im.height, canonical_format(im.format or ""), im.mode, n_frames)


def _rawmode(im: Image.Image) -> str:
    if not im.tile:
        return ""
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _is_16bit_colour(im: Image.Image) -> bool:
    return im.format in ("PNG", "TIFF") and im.mode in ("RGB", "RGBA", "LA") and ";16" in _rawmode(im)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an HxW[xC] array, as ``ImageOps.exif_transpose`` does."""
    swap = (1, 0, *range(2, arr.ndim))
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: a.transpose(swap)[:, ::-1],
        7: lambda a: a.transpose(swap)[::-1, ::-1],
        8: lambda a: a.transpose(swap)[::-1],
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _safe_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8); 1 when absent or malformed. For TIFF it must be read before ``load()``,
    which applies it and drops the tag."""
    try:
        value = im.tag_v2.get(_ORIENTATION, 1) if im.format == "TIFF" else im.getexif().get(_ORIENTATION, 1)
        value = int(value)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _exif_transpose(im: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``; a malformed EXIF block leaves the image as stored rather than failing it."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:
        return im


def _exif_bytes(im: Image.Image) -> bytes | None:
    """The EXIF block to write back (orientation reset to 1); None when absent or unreadable (never fatal)."""
    try:
        return _exif_bytes_or_raise(im)
    except Exception:
        return None


def _exif_bytes_or_raise(im: Image.Image) -> bytes | None:
    exif = im.getexif()
    if not len(exif):
        return None
    if im.format == "TIFF":  # IFD0 of a TIFF is the file's own layout: keep the descriptive tags only
        clean = Image.Exif()
        for tag in _TIFF_EXIF_TAGS:
            if tag in exif:
                clean[tag] = exif[tag]
        for tag in _EXIF_SUB_IFDS:
            sub = exif.get_ifd(tag) if tag in exif else {}
            if sub:
                clean[tag] = dict(sub)
        if not len(clean):
            return None
        exif = clean
    elif _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    return exif.tobytes()


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1 / 255)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        return arr.astype(np.float32) * np.float32(1 / 65535)
    if arr.dtype.kind in "iu":  # mode "I": 32-bit integers holding 16-bit samples
        return np.clip(arr, 0, 65535).astype(np.float32) * np.float32(1 / 65535)
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0, 1)  # mode "F"


def _decode_16bit_colour(path: Path, data: bytes, im: Image.Image, orientation: int) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (2, 3, 4):
        raise _fail(path, "cannot decode 16-bit colour data")
    if arr.shape[2] == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    oriented = _orient(arr, orientation)
    got = (
        oriented.shape[:2] if im.format == "TIFF" else arr.shape[:2]
    )  # Pillow's TIFF size is already oriented
    if got != (im.height, im.width):
        raise _fail(path, f"16-bit decoder gave {got[1]}x{got[0]}, header says {im.width}x{im.height}")
    return oriented


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except Exception:  # a broken or mismatched profile: fall back to the naive conversion
            pass
    return im.convert("RGB")


def _pixels(path: Path, im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool, int, bool]:
    """-> (colour HxWx3 or HxW, alpha or None, grayscale, bit_depth, icc_still_valid) of a loaded image."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("LA" if mode == "L" else "RGBA")
        mode = im.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info or (im.palette and im.palette.mode == "RGBA")
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
        mode = im.mode
    elif mode in ("YCbCr", "LAB", "HSV"):
        im, mode = im.convert("RGB"), "RGB"
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(im)), None, False, 8, False
    if mode in ("L", "RGB"):
        return np.asarray(im), None, mode == "L", 8, True
    if mode in ("LA", "RGBA"):
        a = np.asarray(im)
        return a[..., :-1].squeeze(-1) if mode == "LA" else a[..., :3], a[..., -1], mode == "LA", 8, True
    if mode.startswith("I;16") or mode in ("I", "F"):
        return np.asarray(im), None, True, 16, True
    raise _fail(path, f"unsupported image mode {mode}")


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> LoadedImage:
    """Decode an image for the model (see the module docstring for the policies).

    Raises :class:`~invsr_cli.errors.ImageReadError` (one line naming the file) for a missing, empty, truncated,
    unreadable, non-image, animated or too large file.
    """
    path = Path(path)
    _check_file(path)
    with _open_file(path) as fp, _open(path, fp) as im:
        fmt = canonical_format(im.format or "")
        try:
            n_frames = _n_frames(im)
        except Exception as exc:
            raise _fail(path, f"unreadable frames ({_describe(exc)})") from None
        if n_frames > 1 and im.format != "MPO":
            raise _fail(path, f"animated image with {n_frames} frames; invsr upscales still images only")
        w, h = im.size
        _check_pixels(path, w, h, max_pixels)
        colour16 = _is_16bit_colour(im)
        rawmode = _rawmode(im)  # before load(), which clears the tile list
        orientation = _safe_orientation(im) if im.format == "TIFF" and colour16 else None
        try:
            im.load()  # decode everything now: truncation and corruption surface here
            icc = im.info.get("icc_profile") or None
            if colour16:
                if orientation is None:
                    orientation = _safe_orientation(im)
                fp.seek(0)
                arr = _decode_16bit_colour(path, fp.read(), im, orientation)
                # Pillow reports 16-bit gray+alpha PNG as RGBA; the raw mode tells
                grayscale = im.mode == "LA" or rawmode.startswith("LA")
                mode = "LA;16" if grayscale else f"{im.mode};16"
                colour = arr[..., 0] if grayscale else arr[..., :3]
                alpha = arr[..., -1] if arr.shape[2] in (2, 4) else None
                bit_depth, icc_ok = 16, True
            else:
                oriented = _exif_transpose(im)
                mode = oriented.mode
                colour, alpha, grayscale, bit_depth, icc_ok = _pixels(path, oriented)
            exif = _exif_bytes(im)  # last: it resets the orientation of im's cached EXIF
        except ImageReadError:
            raise
        except Image.DecompressionBombError as exc:
            raise _fail(path, f"refused as a possible decompression bomb: {exc}") from None
        except Exception as exc:
            raise _fail(path, f"cannot decode ({_describe(exc)})") from None

    rgb = _to_float(colour)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return LoadedImage(
        path=path,
        rgb=np.ascontiguousarray(rgb),
        alpha=None if alpha is None else _to_float(alpha),
        grayscale=grayscale,
        bit_depth=bit_depth,
        format=fmt,
        icc=icc if icc_ok else None,
        exif=exif,
        width=rgb.shape[1],
        height=rgb.shape[0],
        mode=mode,
    )


# --------------------------------------------------------------------------------------------------- encoding


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _encode_png16(arr: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """16-bit PNG of an HxWxC uint16 array (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA), 'Up' row filter."""
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = arr.astype(">u2").view(np.uint8).reshape(h, w * c * 2)
    filtered = np.empty((h, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # Up: byte minus the byte above (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))]
    if icc:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        out.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    out.append(_png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def _encode_tiff16(arr: np.ndarray, icc: bytes | None) -> bytes:
    """16-bit little-endian RGB(A) TIFF (one deflate strip, horizontal predictor) of an HxWx3|4 uint16 array."""
    h, w, c = arr.shape
    if c not in (3, 4):
        raise ValueError(f"expected 3 or 4 channels, got {c}")
    diff = arr.astype("<u2")
    diff[:, 1:] = arr[:, 1:] - arr[:, :-1]  # predictor 2: horizontal differencing, per sample, mod 2**16
    strip = zlib.compress(diff.astype("<u2").tobytes(), 6)
    SHORT, LONG, UNDEF = 3, 4, 7
    entries: list[tuple[int, int, int, bytes]] = []  # tag, type, count, payload (little-endian)

    def add(tag: int, typ: int, values: list[int] | bytes) -> None:
        if isinstance(values, bytes):
            entries.append((tag, typ, len(values), values))
        else:
            fmt = f"<{len(values)}{'H' if typ == SHORT else 'I'}"
            entries.append((tag, typ, len(values), struct.pack(fmt, *values)))

    n_tags = 12 + (c == 4) + bool(icc)
    ifd_size = 2 + 12 * n_tags + 4
    add(256, LONG, [w])
    add(257, LONG, [h])
    add(258, SHORT, [16] * c)
    add(259, SHORT, [8])  # Adobe deflate
    add(262, SHORT, [2])  # RGB
    add(273, LONG, [0])  # StripOffsets, patched below
    add(277, SHORT, [c])
    add(278, LONG, [h])
    add(279, LONG, [len(strip)])
    add(284, SHORT, [1])  # chunky
    add(317, SHORT, [2])  # horizontal predictor
    add(339, SHORT, [1] * c)  # unsigned integers
    if c == 4:
        add(338, SHORT, [2])  # ExtraSamples: unassociated alpha
    if icc:
        add(34675, UNDEF, icc)
    entries.sort()
    assert len(entries) == n_tags
    extra_at = 8 + ifd_size
    extra = bytearray()
    fields = []
    for tag, typ, count, payload in entries:
        if len(payload) <= 4:
            fields.append((tag, typ, count, payload.ljust(4, b"\x00")))
        else:
            fields.append((tag, typ, count, struct.pack("<I", extra_at + len(extra))))
            extra += payload + (b"\x00" if len(payload) % 2 else b"")
    strip_at = extra_at + len(extra)
    ifd = bytearray(struct.pack("<H", n_tags))
    for tag, typ, count, value in fields:
        if tag == 273:
            value = struct.pack("<I", strip_at)
        ifd += struct.pack("<HHI", tag, typ, count) + value
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + bytes(ifd) + bytes(extra) + strip


def _quantise(x: np.ndarray, bits: int) -> np.ndarray:
    top = 65535 if bits == 16 else 255
    return np.rint(np.clip(x, 0.0, 1.0) * top).astype(np.uint16 if bits == 16 else np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)


def _encode(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    source: LoadedImage,
    fmt: str,
    quality: int | None,
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
    arr = _quantise(np.concatenate(planes, axis=2), bits)
    icc, exif = source.icc, source.exif

    if bits == 16:
        if fmt == "png":
            return _encode_png16(arr, icc, exif)
        if arr.shape[2] == 2:  # 16-bit gray+alpha TIFF is read by few tools (not Pillow, not OpenCV)
            arr = arr[..., [0, 0, 0, 1]]
        if arr.shape[2] != 1:
            return _encode_tiff16(arr, icc)
        im = Image.fromarray(arr[..., 0])  # I;16: Pillow keeps ICC and EXIF
    else:
        im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)

    buf = io.BytesIO()
    params: dict[str, Any] = {}
    if icc:
        params["icc_profile"] = icc
    if exif and not (fmt == "jpg" and len(exif) > _JPEG_MAX_EXIF):
        params["exif"] = exif
    q = DEFAULT_QUALITY if quality is None else int(quality)
    if fmt == "png":
        im.save(buf, "PNG", compress_level=6, **params)
    elif fmt == "jpg":
        im.save(buf, "JPEG", quality=q, subsampling=0 if q >= 90 else 2, **params)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=q, **params)
    else:
        compression = "tiff_adobe_deflate" if features.check("libtiff") else None
        im.save(buf, "TIFF", compression=compression, **params)
    return buf.getvalue()


def _classify_os_error(path: Path, exc: OSError, what: str) -> OutputError:
    reason = f"{display_path(path)}: cannot {what}: {exc.strerror or _describe(exc)}"
    if exc.errno in _DISK_FULL_ERRNOS:
        return DiskFullError(reason)
    return OutputError(reason)


def _temp_name(final: Path) -> Path:
    stem = final.name
    while len(os.fsencode(stem)) > 64:
        stem = stem[:-1]
    return final.with_name(f".{stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a folder; only a failing disk matters here
        if exc.errno in _DISK_FULL_ERRNOS:
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> int:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder (``.NAME.XXXXXXXX.invsr-tmp``),
    written, flushed and fsynced, then renamed over ``path``; the folder is fsynced after the rename. Parent folders
    are created. On any failure the temporary file is removed and nothing appears under ``path``.

    Returns the number of bytes written. Raises :class:`DiskFullError` (ENOSPC, EIO, EDQUOT) or
    :class:`OutputError`.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{display_path(path)}: cannot write: the output path is an existing folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _classify_os_error(path, exc, "create the folder") from exc
    fd = -1
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _classify_os_error(path, exc, "create a temporary file") from exc
    else:  # pragma: no cover - 100 random collisions
        raise OutputError(f"{display_path(path)}: cannot create a temporary file")
    step = "write"
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            step = "sync"
            os.fsync(f.fileno())
        step = "rename"
        os.replace(tmp, path)
        step = "sync the folder of"
        _fsync_dir(path.parent)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        if step != "sync the folder of":
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise _classify_os_error(path, exc, step) from exc
        raise
    return len(data)


def write_image(
    path: str | os.PathLike[str],
    rgb_hr: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    source: LoadedImage,
    format: str,
    quality: int | None = None,
) -> int:
    """Encode and atomically write an upscaled image; returns the bytes written.

    ``rgb_hr``: float32 ``(H, W, 3)`` in [0, 1] (values outside are clipped); ``alpha``: float32 ``(H, W)`` or
    None. The grayscale flag, bit depth, ICC and EXIF come from ``source``. ``format``: png, jpg, webp or tiff
    (``Job.format``; extension spellings jpeg/jpe/jfif/tif accepted); ``quality`` (1..100) is used by jpg and
    webp, default 95.
    """
    path = Path(path)
    fmt = canonical_format(format)
    if fmt not in WRITE_FORMATS:
        raise ConfigError(f"`format` must be one of {', '.join(WRITE_FORMATS)}; got {format!r}")
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ConfigError(f"`quality` must be between 1 and 100, got {quality}")
    if rgb_hr.ndim != 3 or rgb_hr.shape[2] != 3:
        raise ValueError(f"rgb_hr must be (H, W, 3), got {rgb_hr.shape}")
    if alpha is not None and alpha.shape != rgb_hr.shape[:2]:
        raise ValueError(f"alpha must be {rgb_hr.shape[:2]}, got {alpha.shape}")
    try:
        data = _encode(rgb_hr, alpha, source, fmt, quality)
    except Exception as exc:
        raise OutputError(f"{display_path(path)}: cannot encode {fmt}: {_describe(exc)}") from exc
    return atomic_write_bytes(path, data)


def cleanup_stale_temps(out_dir: str | os.PathLike[str]) -> int:
    """Remove temporary files (``.*.invsr-tmp``) left under ``out_dir`` by an interrupted run; returns how many.

    Symlinked folders are not followed. Call it while holding the output folder's lock: a concurrent run's
    temporary files look the same.
    """
    removed = 0
    for root, _dirs, files in os.walk(out_dir, followlinks=False):
        for name in files:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


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
